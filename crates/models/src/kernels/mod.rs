//! CPU kernels with their own backward, plugged into burn through its backend-extension
//! API (see `bn_relu.rs` for how): the operations where burn-flex 0.22.1 is furthest from
//! PyTorch (`bench/densenet_ops.sh`). Each falls back to burn's own ops off the CPU
//! backend.

/// Compiles a loop twice: for the baseline target, and with AVX2 and FMA
/// enabled, picked at run time (the baseline x86-64 target has only SSE2, which leaves
/// these loops at a quarter of the machine's vector width; burn-flex and PyTorch dispatch
/// the same way).
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        #[inline]
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub mod avg_pool;
pub mod bf16;
pub mod bn_relu;
pub mod conv;
pub mod dense_block;
pub mod max_pool;
pub mod winograd;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Bytes, DType};

/// Whether a kernel may take `x` at all: kernels on, an f32 tensor on burn-flex, and
/// either no graph or one without gradient checkpointing (a checkpointed graph recomputes
/// through burn's own ops, which know nothing of ours).
fn on_cpu_f32(x: &burn::prelude::Tensor<4>) -> bool {
    use burn::tensor::GradientCheckpointingStrategy;
    enabled()
        && x.device() == burn::prelude::Device::flex()
        && x.dtype() == DType::F32
        && (!x.device().is_autodiff()
            || x.gradient_checkpointing_strategy() == Some(GradientCheckpointingStrategy::Disabled))
}

/// The buffer laid out row-major: incoming gradients may be strided views or broadcasts.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The tensor as a batch of contiguous images (each `[C, H, W]` block row-major, the
/// blocks any distance apart): a contiguous tensor, or a channel prefix of a dense block's
/// feature buffer, kept as it is; anything else copied into a contiguous one.
fn images(t: FlexTensor) -> FlexTensor {
    let shape = t.layout().shape().to_vec();
    let strides = t.layout().strides();
    let ok = shape.len() == 4
        && strides[3] == 1
        && strides[2] == shape[3] as isize
        && strides[1] == (shape[2] * shape[3]) as isize
        && strides[0] >= (shape[1] * shape[2] * shape[3]) as isize;
    if ok { t } else { t.to_contiguous() }
}

/// The data of a tensor that [`images`] returned, from its first element, and the
/// distance between its images.
fn image_data(t: &FlexTensor) -> (&[f32], usize) {
    let l = t.layout();
    (
        &t.storage::<f32>()[l.start_offset()..],
        l.strides()[0] as usize,
    )
}

/// A raw pointer that rayon's workers may share: each writes a disjoint part.
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(*mut f32);

// SAFETY: the pointer is only dereferenced where the code proves the parts disjoint.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so that closures capture the wrapper (which is `Send`), not the
    /// raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A vector of `len` floats that `fill` writes, not zeroed first: the kernels' outputs
/// are written whole, and zeroing them first (a `calloc` of reused memory) was a
/// twentieth of a DenseNet-121 training step (perf).
///
/// # Safety
/// `fill` must write every one of the `len` elements.
unsafe fn written(len: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's guarantee: `fill` initialised the first `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// A contiguous f32 tensor owning `v` (no copy).
fn wrap(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(v),
        Layout::contiguous(burn::backend::Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// The data of a contiguous f32 tensor.
fn as_f32(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// A process-wide on/off switch read from an environment variable on first use (on
/// unless it is `off`), for A/B benchmarks in one build and for tests.
pub(crate) struct Switch {
    /// 0: not read yet, 1: on, 2: off.
    state: AtomicU8,
    var: &'static str,
}

impl Switch {
    pub(crate) const fn new(var: &'static str) -> Self {
        Switch {
            state: AtomicU8::new(0),
            var,
        }
    }

    pub(crate) fn on(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let on = std::env::var(self.var).map_or(true, |v| v != "off");
                self.set(on);
                on
            }
        }
    }

    pub(crate) fn set(&self, on: bool) {
        self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }
}

static KERNELS: Switch = Switch::new("MEDRET_KERNELS");

/// Whether the kernels are used: on unless `MEDRET_KERNELS=off` (read on first use) or
/// [`set_enabled`] said otherwise. The switch is for A/B benchmarks in one build and for
/// tests that compare a kernel with burn's own path through a whole network.
pub fn enabled() -> bool {
    KERNELS.on()
}

/// Turns the kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    KERNELS.set(on);
}

/// The precision of the convolutions' matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout: training, and inference unless asked otherwise.
    #[default]
    F32,
    /// Operands rounded to bfloat16, products accumulated in f32 (`bf16.rs`): opt-in for
    /// inference (encoding an archive). Fast where the CPU has AMX.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}` (f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// The precision the convolution kernels' products run at, for the whole process.
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// Sets the products' precision for the whole process. bf16 is meant for inference: a
/// training step under it would take its gradients' products in bf16 too.
pub fn set_precision(p: Precision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
}

/// [`set_precision`] for work on `device`, as the commands that encode take it: bf16 is
/// refused off the CPU (its products are CPU kernels). Returns whether bf16 will be
/// emulated (no AMX here: the same codes, slower than f32), for the caller to say so.
pub fn set_precision_for(p: Precision, device: &burn::prelude::Device) -> Result<bool, String> {
    if p == Precision::Bf16 && *device != burn::prelude::Device::flex() {
        return Err(
            "--precision bf16 runs on the CPU only (it is the CPU kernels' bf16 product)".into(),
        );
    }
    set_precision(p);
    Ok(p == Precision::Bf16 && !bf16::amx_available())
}
