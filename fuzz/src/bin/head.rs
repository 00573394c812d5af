//! Fuzzes `head::classify` (src/server/fast_path/head.rs), the fast path's judgement of a request head.
//! Invariants: no panic; a head it serves is no longer than the input, is judged the same from its own bytes, and
//! every shorter prefix of it is `Partial` (never served, never handed to hyper); its framing is what its
//! `Content-Length` / `Transfer-Encoding` say (one of them at most).

use dcr_proxy::server::fast_path::head::{classify, content_length, Framing, Parsed};

const METADATA: &str = "/.well-known/oauth-protected-resource/mcp";

fn check(data: &[u8]) {
    let Parsed::Head(head) = classify(data, METADATA) else { return };
    assert!(head.len <= data.len());
    match classify(&data[..head.len], METADATA) {
        Parsed::Head(again) => assert_eq!((again.len, again.framing), (head.len, head.framing)),
        other => panic!("the head alone is {other:?}"),
    }
    for cut in [head.len - 1, head.len / 2, 1] {
        if cut < head.len {
            assert!(matches!(classify(&data[..cut], METADATA), Parsed::Partial), "prefix of {cut} bytes");
        }
    }
    let lengths: Vec<_> = head.headers.get_all(http::header::CONTENT_LENGTH).iter().collect();
    let encodings = head.headers.get_all(http::header::TRANSFER_ENCODING).iter().count();
    assert!(lengths.len() + encodings <= 1);
    match head.framing {
        Framing::Chunked => assert_eq!(encodings, 1),
        Framing::Length(n) => assert_eq!(lengths.iter().map(|v| content_length(v.as_bytes())).next(), Some(Some(n))),
        Framing::Empty => {
            assert_eq!(encodings, 0);
            assert!(lengths.iter().all(|v| content_length(v.as_bytes()) == Some(0)));
        }
        Framing::UntilClose => panic!("a request is never close-delimited"),
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
