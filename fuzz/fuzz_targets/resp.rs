//! The chat handler's RESP parser (the Redis bridge reads every reply and
//! pub/sub message through it) and its encoder.
//!
//! Input: a split mode and a seed for how the bytes arrive, a limits byte
//! (the defaults, or small limits that the input can reach), then the
//! byte stream.
//!
//! Checked on every input:
//! - no panic; never more buffered than one value's limit plus one read;
//! - the values do not depend on how the stream is split into reads: they
//!   equal those of the whole stream fed at once, and so does the error
//!   (if any), after the same values;
//! - every value parsed encodes back to bytes that parse to exactly itself;
//! - once failed, the parser stays failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopd_chat::resp::{encode, Limits, Parser, ProtocolError, Value};
use loopd_fuzz::{chunks, Input, Rng};

fn run(limits: Limits, parts: &[&[u8]]) -> (Vec<Value>, Option<ProtocolError>) {
    let mut p = Parser::new(limits);
    let mut values = Vec::new();
    for part in parts {
        p.feed(part);
        loop {
            match p.next() {
                Ok(Some(v)) => values.push(v),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(p.next(), Err(e.clone()), "failed stays failed");
                    return (values, Some(e));
                }
            }
        }
        assert!(
            p.buffered() <= limits.max_value + part.len(),
            "{} bytes buffered",
            p.buffered()
        );
    }
    (values, None)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let seed = u64::from(input.u32());
    let limits = if input.u8() & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bulk: 64,
            max_line: 32,
            max_items: 8,
            max_depth: 4,
            max_value: 512,
        }
    };
    let stream = input.rest();
    let whole = run(limits, &[stream]);
    let parts = chunks(stream, mode, &mut Rng::new(seed));
    let split = run(limits, &parts);
    assert_eq!(whole, split, "the split changed the outcome");
    for v in &whole.0 {
        let mut out = Vec::new();
        encode(&mut out, v);
        let mut p = Parser::new(Limits {
            max_value: usize::MAX,
            ..Limits::default()
        });
        p.feed(&out);
        assert_eq!(p.next().as_ref(), Ok(&Some(v.clone())), "round trip");
        assert_eq!(p.buffered(), 0);
    }
});
