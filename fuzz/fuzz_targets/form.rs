#![no_main]

// The body lives in medret-server (`medret_server::fuzzing`) so that the corpus replays
// on stable (crates/server/tests/fuzz_corpus.rs). The hook prints a panic's message only:
// a panic medret catches is not a crash; one that escapes still aborts.
libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    },
    |data: &[u8]| medret_server::fuzzing::form(data)
);
