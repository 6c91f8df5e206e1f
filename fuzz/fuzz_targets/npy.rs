#![no_main]

// The body lives in medret-data so that the corpus replays on stable
// (crates/data/tests/fuzz_corpus.rs). The init block replaces libfuzzer-sys's aborting
// panic hook with one that prints the message, so that a panic medret catches (in a
// dependency, turned into an error) is not a crash; one that escapes still aborts
// (libfuzzer-sys catches the unwind).
libfuzzer_sys::fuzz_target!(
    init: {
        // The message only: printing a backtrace for every caught panic made the
        // fuzzer's memory grow (symbolisation caches) until libFuzzer reported an
        // out-of-memory after 320,000 runs.
        std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    },
    |data: &[u8]| medret_data::fuzzing::npy(data)
);
