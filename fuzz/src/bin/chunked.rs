//! Fuzzes `Chunked::feed` (src/server/fast_path/chunked.rs). The first input byte picks how the rest is split
//! into reads; the rest is the body. Invariants: no panic; the same result (ended, error, output, what is left) fed
//! whole, byte by byte and in pieces of the picked size; a body that ended decodes again, from its re-encoded
//! output, to the same output, with nothing left over.

use bytes::BytesMut;
use dcr_proxy::server::fast_path::chunked::{ChunkError, Chunked};

/// The outcome of feeding `pieces` one after another: the last result, the output, and the input left over
/// (`None` after an error: the reads that were not fed are not in it).
fn run<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Result<bool, ChunkError>, Vec<u8>, Option<Vec<u8>>) {
    let mut decoder = Chunked::default();
    let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
    let mut last = Ok(false);
    for piece in pieces {
        input.extend_from_slice(piece);
        last = decoder.feed(&mut input, &mut out);
        if last.is_err() {
            return (last, out.to_vec(), None);
        }
        assert_eq!(decoder.done(), last == Ok(true));
    }
    (last, out.to_vec(), Some(input.to_vec()))
}

fn check(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let whole = run(std::iter::once(body));
    let bytes = run(body.chunks(1));
    let pieces = run(body.chunks(usize::from(pick % 64) + 1));
    assert_eq!(whole, bytes, "whole and byte by byte differ");
    assert_eq!(whole, pieces, "whole and in pieces of {} differ", pick % 64 + 1);
    if let (Ok(true), out, _) = &whole {
        let again = run(std::iter::once(&out[..]));
        assert_eq!(again, (Ok(true), out.clone(), Some(Vec::new())), "the re-encoded body does not decode to itself");
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
