//! Parameter-level helpers the optimiser step needs: global-norm gradient clipping,
//! merging data-parallel gradients, and stable parameter ids for resumable optimiser state.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::prelude::*;

/// The sum of the squares of all gradients of `model`'s parameters, computed on `device`
/// and left there (`None` when no parameter has a gradient), so a training step can read
/// it back together with its loss.
pub fn grad_sum_sq<M: Module>(
    model: &M,
    grads: &GradientsParams,
    device: &Device,
) -> Option<Tensor<1>> {
    struct SumSq<'a> {
        grads: &'a GradientsParams,
        device: &'a Device,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSq<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let g = g.to_device(self.device);
                let s = (g.clone() * g).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSq {
        grads,
        device,
        total: None,
    };
    model.visit(&mut v);
    v.total
}

/// Global L2 norm of all gradients of `model`'s parameters, computed on `device`: one
/// read back to the host.
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams, device: &Device) -> f32 {
    grad_sum_sq(model, grads, device)
        .map_or(0.0, |t| (medret_models::host::scalar(t) as f32).sqrt())
}

/// Scales every gradient so that their global L2 norm is at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` does (burn's own clipping works per tensor). Returns the norm before
/// clipping.
pub fn clip_grad_norm<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f32,
    device: &Device,
) -> f32 {
    let norm = grad_norm(model, grads, device);
    clip_to_norm(model, grads, norm, max_norm);
    norm
}

/// [`clip_grad_norm`] with the norm already known (read back with the step's loss).
pub fn clip_to_norm<M: Module>(model: &M, grads: &mut GradientsParams, norm: f32, max_norm: f32) {
    // Same epsilon as PyTorch, so a zero gradient is left alone.
    let scale = max_norm / (norm + 1e-6);
    if norm.is_finite() && scale < 1.0 {
        struct Scale<'a> {
            grads: &'a mut GradientsParams,
            scale: f32,
        }
        impl ModuleVisitor for Scale<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.grads.remove::<D>(param.id) {
                    self.grads.register(param.id, g.mul_scalar(self.scale));
                }
            }
        }
        model.visit(&mut Scale { grads, scale });
    }
}

/// Sums per-replica gradients into one set with burn's own data-parallel accumulation
/// ([`MultiGradientsParams::remove`], the routine behind `ModuleOptimizer::step_multi`), so
/// that the global-norm clipping above can see the total gradient before the step.
pub fn merge_replica_grads<M: Module>(model: &M, multi: MultiGradientsParams) -> GradientsParams {
    struct Merge {
        multi: MultiGradientsParams,
        out: GradientsParams,
    }
    impl ModuleVisitor for Merge {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((g, _device)) = self.multi.remove::<D>(param.id) {
                self.out.register(param.id, g);
            }
        }
    }
    let mut m = Merge {
        multi,
        out: GradientsParams::new(),
    };
    model.visit(&mut m);
    m.out
}

/// Forces burn's lazily initialised parameters to draw their values now: burn defers a
/// parameter's initialisation to its first use, which would otherwise happen outside the
/// seeded section and make runs depend on what else the process drew in between.
pub fn initialise_now<M: Module>(model: M) -> M {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
    model
}

/// Gives every parameter an id derived from its path in the module tree (FNV-1a of
/// `features.blocks.0.layers.1.conv1.weight`, say). burn keys optimiser state by parameter
/// id and draws fresh ids for each new model, so without this a resumed run could not find
/// the moment estimates it saved.
pub fn assign_stable_ids<M: Module>(model: M) -> M {
    struct Ids {
        path: Vec<String>,
    }
    impl ModuleMapper for Ids {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.id = ParamId::from(fnv1a(self.path.join(".").as_bytes()));
            param
        }
    }
    model.map(&mut Ids { path: Vec::new() })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read tensors directly; only training code is counted
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn two(device: &Device) -> Two {
        Two {
            a: LinearConfig::new(2, 2).init(device),
            b: LinearConfig::new(2, 1).init(device),
        }
    }

    fn set(device: &Device, v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn stable_ids_depend_on_path_only() {
        let dev = Device::flex();
        let ids = |m: &Two| {
            let mut v = vec![m.a.weight.id, m.b.weight.id];
            v.extend(m.a.bias.as_ref().map(|b| b.id));
            v
        };
        let m1 = assign_stable_ids(two(&dev));
        let m2 = assign_stable_ids(two(&dev));
        assert_eq!(ids(&m1), ids(&m2));
        let all = ids(&m1);
        assert_ne!(all[0], all[1], "different paths, different ids");
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        // FNV-1a test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let dev = Device::flex();
        let m = two(&dev);
        let mut grads = GradientsParams::new();
        // Norm over both tensors: sqrt(3^2 + 4^2 + 12^2) = 13 (the per-tensor norms, 3 and
        // sqrt(160), would clip differently).
        grads.register(m.a.weight.id, set(&dev, vec![3.0, 0.0, 0.0, 0.0], [2, 2]));
        grads.register(m.b.weight.id, set(&dev, vec![4.0, 12.0], [2, 1]));
        let norm = clip_grad_norm(&m, &mut grads, 6.5, &dev);
        assert!((norm - 13.0).abs() < 1e-5);
        let a = grads
            .get::<2>(m.a.weight.id)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = grads
            .get::<2>(m.b.weight.id)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((a[0] - 1.5).abs() < 1e-5, "{a:?}");
        assert!(
            (b[0] - 2.0).abs() < 1e-5 && (b[1] - 6.0).abs() < 1e-5,
            "{b:?}"
        );
        assert!((grad_norm(&m, &grads, &dev) - 6.5).abs() < 1e-4);
        // Under the limit: untouched.
        let norm = clip_grad_norm(&m, &mut grads, 100.0, &dev);
        assert!((norm - 6.5).abs() < 1e-4);
        let b2 = grads
            .get::<2>(m.b.weight.id)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(b, b2);
    }

    #[test]
    fn replica_gradients_are_summed() {
        let dev = Device::flex();
        let m = two(&dev);
        let mut g1 = GradientsParams::new();
        let mut g2 = GradientsParams::new();
        g1.register(m.b.weight.id, set(&dev, vec![1.0, 2.0], [2, 1]));
        g2.register(m.b.weight.id, set(&dev, vec![10.0, 20.0], [2, 1]));
        let multi = MultiGradientsParams {
            grads: vec![(g1, dev.clone()), (g2, dev.clone())],
        };
        let merged = merge_replica_grads(&m, multi);
        let b = merged
            .get::<2>(m.b.weight.id)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(b, vec![11.0, 22.0]);
    }
}

#[cfg(test)]
mod densenet_ids {
    use super::*;

    #[test]
    fn every_densenet_parameter_gets_its_own_stable_id() {
        struct Ids(Vec<u64>);
        impl ModuleVisitor for Ids {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.id.val());
            }
        }
        let m = assign_stable_ids(medret_models::DenseNetConfig::tiny().init(&Device::flex()));
        let mut ids = Ids(Vec::new());
        m.visit(&mut ids);
        let n = ids.0.len();
        ids.0.sort();
        ids.0.dedup();
        assert_eq!(ids.0.len(), n, "parameters share ids");
    }
}
