//! Property tests over the edge's pure frame path ([`chat_edge::dispatch::classify`]): whatever
//! a client sends, in whatever rhythm, the answer is a close with 1009 or 4029, an error with a
//! client-error code of the contract, or a frame that round-trips and passed every check. The
//! `frame_dispatch` fuzz target (`fuzz/`, run by `scripts/fuzz` in the long form) checks the same
//! model with coverage guidance; this is the part CI runs.

mod support {
    pub mod dispatch_model;
}

use proptest::prelude::*;
use support::dispatch_model::run_bytes;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes read as structured steps (frames shaped like client frames, mangled
    /// frames, raw text and binary frames, with pauses).
    #[test]
    fn structured_steps_keep_the_contract(
        setup in any::<[u8; 4]>(),
        steps in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut data = setup.to_vec();
        data.extend(steps.iter().copied().skip_while(|&b| b == b'\n'));
        run_bytes(&data);
    }

    /// Raw text frames, one after another with no pause.
    #[test]
    fn raw_text_frames_keep_the_contract(
        setup in any::<[u8; 4]>(),
        lines in prop::collection::vec("[^\n]{0,200}", 0..24),
    ) {
        let mut data = setup.to_vec();
        data.push(b'\n');
        data.extend(lines.join("\n").into_bytes());
        run_bytes(&data);
    }
}

/// Inputs that once broke the contract, as the fuzzer wrote them (`fuzz/regressions/`).
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/frame_dispatch"
    );
    for entry in std::fs::read_dir(dir).expect("fuzz/regressions/frame_dispatch exists") {
        run_bytes(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}

/// The seed corpus (valid CONTRACT §2 frames) passes the model too.
#[test]
fn seed_corpus_keeps_the_contract() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/frame_dispatch"
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/frame_dispatch exists") {
        let path = entry.unwrap().path();
        // libFuzzer adds its own finds to the folder; the committed seeds are `seed-*`.
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            run_bytes(&std::fs::read(&path).unwrap());
            seen += 1;
        }
    }
    assert!(seen > 0);
}
