//! Chunked authenticated encryption of a long byte stream: the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015, §7)
//! over AES-256-GCM from `ring` (the provider rustls is built with here), for snapshot files of gigabytes.
//!
//! - The plaintext is cut into chunks of `chunk` bytes; the last chunk is shorter (possibly empty), so the reader
//!   knows which chunk is last from where the file ends, never from a length field it would have to trust.
//! - Chunk `i` is sealed under the nonce `0⁵⁶ ‖ i (u32, big-endian) ‖ last (0x00 or 0x01)` with the file's header
//!   as associated data; its 16-byte tag follows its ciphertext.
//! - The key is unique per file: HMAC-SHA256(master key, [`LABEL`] ‖ the header's 32-byte random salt), so the
//!   counter nonces never repeat under one key however many files one master key writes.
//!
//! Invariants:
//! - Truncation anywhere (at a chunk boundary too: that chunk was not sealed as the last one), a dropped,
//!   repeated or reordered chunk (its counter differs), a flipped byte, another file's header or chunk, and a
//!   wrong key all fail authentication. No byte of a chunk is handed on before its tag is checked, and a reader
//!   must reach the authenticated last chunk ([`OpeningReader::finish`]) before anything it read is used.
//! - A stream of 2³² chunks or more is refused rather than letting the counter wrap.
//! - Sealing and opening run on worker threads, one per core up to [`MAX_WORKERS`] ([`seal_to`], [`open_from`]),
//!   overlapping with the encoding or decoding on the caller's thread and with the file I/O on one more thread;
//!   chunks are independent (the nonce is the index), each has its own reply channel queued in stream order, so
//!   they are written and handed on in order however the workers finish. Buffers go back and forth, so memory
//!   stays a few chunks per thread.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use ring::aead;

/// Bytes of the tag after each chunk's ciphertext.
pub(super) const TAG_LEN: usize = 16;

/// Domain separation of the per-file key.
pub(super) const LABEL: &[u8] = b"dcr-proxy snapshot v3 file key";

/// Chunks queued between the threads, each way.
const DEPTH: usize = 4;

/// The most worker threads sealing or opening chunks.
const MAX_WORKERS: usize = 4;

/// A per-file key of the stream.
pub(super) struct StreamKey {
    key: aead::LessSafeKey,
}

/// A chunk did not authenticate (wrong key, changed, missing, repeated or reordered data, or truncation).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a chunk of the stream could not be authenticated")]
pub(super) struct ChunkError;

impl StreamKey {
    /// The key of the file whose header carries `salt`.
    pub(super) fn derive(master: &[u8; 32], salt: &[u8; 32]) -> Self {
        let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master));
        ctx.update(LABEL);
        ctx.update(salt);
        let tag = ctx.sign();
        // A 32-byte key is always valid for AES_256_GCM; `UnboundKey::new` fails only on a wrong length.
        let key = match aead::UnboundKey::new(&aead::AES_256_GCM, &tag.as_ref()[..32]) {
            Ok(k) => k,
            Err(_) => unreachable!("AES_256_GCM takes a 32-byte key"),
        };
        Self { key: aead::LessSafeKey::new(key) }
    }

    fn nonce(index: u32, last: bool) -> aead::Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        aead::Nonce::assume_unique_for_key(n)
    }

    /// Seals chunk `index` in place (the tag is appended).
    pub(super) fn seal(&self, index: u32, last: bool, aad: &[u8], chunk: &mut Vec<u8>) {
        // Sealing fails only past AES-GCM's per-message limit (64 GiB), far above any chunk size.
        if self.key.seal_in_place_append_tag(Self::nonce(index, last), aead::Aad::from(aad), chunk).is_err() {
            unreachable!("chunk within the AEAD size limit");
        }
    }

    /// Opens chunk `index` in place: the plaintext, or an error when it does not authenticate as that chunk.
    pub(super) fn open<'a>(
        &self,
        index: u32,
        last: bool,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8], ChunkError> {
        let plain = self.key.open_in_place(Self::nonce(index, last), aead::Aad::from(aad), sealed);
        plain.map(|p| &*p).map_err(|_| ChunkError)
    }
}

/// A chunk handed to a worker thread: its index, whether it is the last, its bytes, and where the result goes
/// (each chunk has its own reply channel, queued in stream order, so workers may finish in any order while the
/// chunks stay in order).
struct Job<R> {
    index: u32,
    last: bool,
    buf: Vec<u8>,
    reply: SyncSender<R>,
}

/// Threads that seal or open chunks beside the caller's thread (which encodes or decodes meanwhile).
pub(super) fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).clamp(1, MAX_WORKERS)
}

/// Takes the next job from a queue shared by the workers; `None` once the queue is closed.
fn next_job<R>(jobs: &std::sync::Mutex<Receiver<Job<R>>>) -> Option<Job<R>> {
    jobs.lock().ok()?.recv().ok()
}

/// A sealed chunk and whether it is the last.
type Sealed = (Vec<u8>, bool);

/// The plaintext side of [`seal_to`]: what is written here is cut into chunks, sealed by worker threads and
/// written in order by another.
pub(super) struct SealingWriter {
    buf: Vec<u8>,
    chunk: usize,
    /// The index of the next chunk.
    index: usize,
    jobs: SyncSender<Job<Sealed>>,
    order: SyncSender<Receiver<Sealed>>,
    empty: Receiver<Vec<u8>>,
}

fn stopped() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sealing thread stopped")
}

impl SealingWriter {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let index = u32::try_from(self.index).map_err(|_| std::io::Error::other("stream of 2^32 chunks"))?;
        self.index += 1;
        let next = self.empty.try_recv().unwrap_or_else(|_| Vec::with_capacity(self.chunk + TAG_LEN));
        let buf = std::mem::replace(&mut self.buf, next);
        let (reply, sealed) = sync_channel(1);
        self.order.send(sealed).map_err(|_| stopped())?;
        self.jobs.send(Job { index, last, buf, reply }).map_err(|_| stopped())
    }
}

impl Write for SealingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.send(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `header`, then what `fill` writes, sealed chunk by chunk, to `out`: the number of bytes written.
/// While `fill` runs, [`workers`] threads seal chunks (each chunk's nonce is its index, so they are independent)
/// and one more thread writes them to `out` in order.
pub(super) fn seal_to<W: Write + Send, T>(
    out: &mut W,
    key: &StreamKey,
    header: &[u8],
    chunk: usize,
    fill: impl FnOnce(&mut SealingWriter) -> std::io::Result<T>,
) -> std::io::Result<(T, u64)> {
    out.write_all(header)?;
    let chunk = chunk.max(1);
    let (jobs_tx, jobs_rx) = sync_channel::<Job<Sealed>>(DEPTH);
    let jobs_rx = std::sync::Mutex::new(jobs_rx);
    let (order_tx, order_rx) = sync_channel::<Receiver<Sealed>>(DEPTH);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            let jobs = &jobs_rx;
            scope.spawn(move || {
                while let Some(mut job) = next_job(jobs) {
                    key.seal(job.index, job.last, header, &mut job.buf);
                    // The writer stopped (it failed): the caller learns it from the order queue.
                    let _ = job.reply.send((job.buf, job.last));
                }
            });
        }
        let writer = scope.spawn(move || -> std::io::Result<u64> {
            let mut written = header.len() as u64;
            for sealed in order_rx {
                let (mut buf, last) = sealed.recv().map_err(|_| stopped())?;
                out.write_all(&buf)?;
                written += buf.len() as u64;
                buf.clear();
                let _ = empty_tx.try_send(buf);
                if last {
                    return Ok(written);
                }
            }
            Err(stopped())
        });
        let mut sealing = SealingWriter {
            buf: Vec::with_capacity(chunk + TAG_LEN),
            chunk,
            index: 0,
            jobs: jobs_tx,
            order: order_tx,
            empty: empty_rx,
        };
        let filled = fill(&mut sealing).and_then(|t| sealing.send(true).map(|()| t));
        // Closing the queues ends the workers and the writer.
        drop(sealing);
        let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("the writing thread panicked")));
        // The writer's own error explains a `fill` that failed because the writer stopped.
        match (filled, written) {
            (Ok(t), Ok(n)) => Ok((t, n)),
            (_, Err(e)) | (Err(e), _) => Err(e),
        }
    })
}

/// Why reading a stream failed.
#[derive(Debug)]
pub(super) enum OpenFailure<E> {
    Io(std::io::Error),
    Chunk(ChunkError),
    /// What the consumer returned.
    Consumer(E),
}

/// An opened chunk and whether it is the last, or why the stream stopped.
type Opened = Result<(Vec<u8>, bool), OpenFailure<std::convert::Infallible>>;

/// The plaintext side of [`open_from`]: reads the authenticated plaintext, chunk by chunk, in order.
pub(super) struct OpeningReader {
    chunks: Receiver<Receiver<Opened>>,
    empty: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    /// The last chunk was opened.
    ended: bool,
    failure: Option<OpenFailure<std::convert::Infallible>>,
}

fn failed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "stream not authentic")
}

impl OpeningReader {
    fn next_chunk(&mut self) -> std::io::Result<bool> {
        if self.ended || self.failure.is_some() {
            return Ok(false);
        }
        match self.chunks.recv().and_then(|opened| opened.recv()) {
            Ok(Ok((buf, last))) => {
                let old = std::mem::replace(&mut self.current, buf);
                let _ = self.empty.try_send(old);
                (self.at, self.ended) = (0, last);
                Ok(true)
            }
            Ok(Err(e)) => {
                self.failure = Some(e);
                Err(failed())
            }
            Err(_) => {
                self.failure = Some(OpenFailure::Io(std::io::Error::other("the opening thread stopped")));
                Err(failed())
            }
        }
    }

    /// Reads what is left up to the authenticated last chunk; an error when the stream does not end there.
    pub(super) fn finish(&mut self) -> std::io::Result<()> {
        while !self.ended {
            if !self.next_chunk()? {
                return Err(failed());
            }
        }
        Ok(())
    }
}

impl Read for OpeningReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.failure.is_some() {
                return Err(failed());
            }
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads `len` bytes or up to the end of `input`, whichever comes first (into the buffer's spare capacity: a
/// file reads into it without zeroing it first).
fn read_up_to(input: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    buf.clear();
    input.take(len as u64).read_to_end(buf).map(|_| ())
}

/// Queues an outcome that needs no worker (an I/O error, a stream too long) in stream order.
fn settled(order: &SyncSender<Receiver<Opened>>, outcome: Opened) {
    let (reply, opened) = sync_channel(1);
    let _ = reply.send(outcome);
    let _ = order.send(opened);
}

/// Opens the stream that follows `header` in `input` (the header already read) and hands its plaintext to
/// `consume`, which must read all of it; meanwhile one thread reads chunks and [`workers`] threads open them (in
/// any order; `consume` sees them in stream order). An error when a chunk does not authenticate, when the stream
/// does not end with its last chunk, or when `consume` fails.
pub(super) fn open_from<R: Read + Send, T, E>(
    input: R,
    key: &StreamKey,
    header: &[u8],
    chunk: usize,
    consume: impl FnOnce(&mut OpeningReader) -> Result<T, E>,
) -> Result<T, OpenFailure<E>> {
    let (jobs_tx, jobs_rx) = sync_channel::<Job<Opened>>(DEPTH);
    let jobs_rx = std::sync::Mutex::new(jobs_rx);
    let (order_tx, order_rx) = sync_channel::<Receiver<Opened>>(DEPTH);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            let jobs = &jobs_rx;
            scope.spawn(move || {
                while let Some(mut job) = next_job(jobs) {
                    let opened = match key.open(job.index, job.last, header, &mut job.buf) {
                        Ok(plain) => {
                            let len = plain.len();
                            job.buf.truncate(len);
                            Ok((job.buf, job.last))
                        }
                        Err(e) => Err(OpenFailure::Chunk(e)),
                    };
                    let _ = job.reply.send(opened);
                }
            });
        }
        scope.spawn(move || {
            let mut input = input;
            for index in 0..=u32::MAX {
                let mut buf = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(chunk + TAG_LEN));
                if let Err(e) = read_up_to(&mut input, &mut buf, chunk + TAG_LEN) {
                    return settled(&order_tx, Err(OpenFailure::Io(e)));
                }
                // A full-size chunk is never the last one: the writer ends with a shorter chunk.
                let last = buf.len() < chunk + TAG_LEN;
                let (reply, opened) = sync_channel(1);
                if order_tx.send(opened).is_err() || jobs_tx.send(Job { index, last, buf, reply }).is_err() || last {
                    return;
                }
            }
            settled(&order_tx, Err(OpenFailure::Chunk(ChunkError)));
        });
        let mut reader = OpeningReader {
            chunks: order_rx,
            empty: empty_tx,
            current: Vec::new(),
            at: 0,
            ended: false,
            failure: None,
        };
        let consumed = consume(&mut reader);
        let finished = reader.finish();
        // A failure of the stream explains a consumer that failed reading it.
        match (reader.failure.take(), consumed, finished) {
            (Some(OpenFailure::Io(e)), _, _) => Err(OpenFailure::Io(e)),
            (Some(OpenFailure::Chunk(e)), _, _) => Err(OpenFailure::Chunk(e)),
            (Some(OpenFailure::Consumer(never)), _, _) => match never {},
            (None, Err(e), _) => Err(OpenFailure::Consumer(e)),
            (None, Ok(_), Err(e)) => Err(OpenFailure::Io(e)),
            (None, Ok(t), Ok(())) => Ok(t),
        }
        // Dropping `reader` closes the order queue, which ends the reading thread, whose end closes the job
        // queue, which ends the workers.
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"test header";
    const CHUNK: usize = 64;

    fn key(byte: u8) -> StreamKey {
        StreamKey::derive(&[byte; 32], &[7u8; 32])
    }

    fn sealed(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let written = seal_to(&mut out, &key(1), HEADER, CHUNK, |w| w.write_all(plain));
        assert_eq!(written.map(|(_, n)| n).ok(), Some(out.len() as u64));
        out
    }

    fn opened(file: &[u8], with: u8) -> Result<Vec<u8>, OpenFailure<std::io::Error>> {
        assert_eq!(&file[..HEADER.len()], HEADER);
        open_from(&file[HEADER.len()..], &key(with), HEADER, CHUNK, |r| {
            let mut plain = Vec::new();
            r.read_to_end(&mut plain).map(|_| plain)
        })
    }

    fn refused(file: &[u8]) -> bool {
        matches!(opened(file, 1), Err(OpenFailure::Chunk(_)))
    }

    fn chunks(file: &[u8]) -> Vec<Vec<u8>> {
        file[HEADER.len()..].chunks(CHUNK + TAG_LEN).map(<[u8]>::to_vec).collect()
    }

    fn join(chunks: &[Vec<u8>]) -> Vec<u8> {
        [HEADER.to_vec(), chunks.concat()].concat()
    }

    #[test]
    fn round_trips_any_length_the_last_chunk_always_shorter() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = sealed(&plain);
            // Full chunks, then one shorter (empty when the plaintext fills the chunks exactly).
            assert_eq!(file.len(), HEADER.len() + len + (len / CHUNK + 1) * TAG_LEN, "length {len}");
            assert_eq!(opened(&file, 1).ok(), Some(plain), "length {len}");
        }
    }

    #[test]
    fn an_empty_stream_and_a_stream_of_exactly_one_chunk_authenticate_their_end() {
        let empty = sealed(b"");
        assert_eq!(opened(&empty, 1).ok(), Some(Vec::new()));
        assert!(refused(&empty[..empty.len() - 1]));
        assert!(refused(HEADER), "no chunk at all is not an empty stream");
        // One full chunk and the empty last one: dropping the last one is a truncation at a chunk boundary.
        let one = sealed(&[9u8; CHUNK]);
        assert_eq!(chunks(&one).len(), 2);
        assert!(refused(&one[..HEADER.len() + CHUNK + TAG_LEN]));
    }

    #[test]
    fn truncation_dropped_repeated_and_reordered_chunks_are_refused() {
        let plain: Vec<u8> = (0..4 * CHUNK + 10).map(|i| i as u8).collect();
        let file = sealed(&plain);
        let c = chunks(&file);
        assert_eq!(c.len(), 5);
        for cut in
            [HEADER.len() + 1, HEADER.len() + CHUNK + TAG_LEN, HEADER.len() + 2 * (CHUNK + TAG_LEN), file.len() - 1]
        {
            assert!(refused(&file[..cut]), "truncated at {cut}");
        }
        assert!(refused(&join(&[c[0].clone(), c[2].clone(), c[3].clone(), c[4].clone()])), "dropped");
        assert!(refused(&join(&[c[0].clone(), c[1].clone(), c[1].clone(), c[2].clone(), c[3].clone(), c[4].clone()])));
        assert!(refused(&join(&[c[1].clone(), c[0].clone(), c[2].clone(), c[3].clone(), c[4].clone()])), "reordered");
        assert!(refused(&join(&[c.clone(), vec![c[4].clone()]].concat())), "last chunk repeated");
        // Another file's chunk (same key, another salt) is refused too.
        let mut other = Vec::new();
        let other_key = StreamKey::derive(&[1; 32], &[8u8; 32]);
        assert!(seal_to(&mut other, &other_key, HEADER, CHUNK, |w| w.write_all(&plain)).is_ok());
        let o = chunks(&other);
        assert!(refused(&join(&[c[0].clone(), o[1].clone(), c[2].clone(), c[3].clone(), c[4].clone()])));
    }

    #[test]
    fn a_flipped_byte_anywhere_and_a_wrong_key_are_refused() {
        let file = sealed(&[5u8; 2 * CHUNK + 3]);
        for at in HEADER.len()..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            assert!(refused(&bad), "byte {at}");
        }
        assert!(matches!(opened(&file, 2), Err(OpenFailure::Chunk(_))));
        // The header is bound to every chunk.
        let mut other_header = file.clone();
        other_header[0] ^= 0x01;
        let result = open_from(&other_header[HEADER.len()..], &key(1), &other_header[..HEADER.len()], CHUNK, |r| {
            let mut plain = Vec::new();
            r.read_to_end(&mut plain).map(|_| plain)
        });
        assert!(matches!(result, Err(OpenFailure::Chunk(_))));
    }

    #[test]
    fn a_consumer_that_stops_early_still_needs_the_authenticated_end() {
        let file = sealed(&[5u8; 3 * CHUNK]);
        let first_chunk_only = |f: &[u8]| {
            open_from(&f[HEADER.len()..], &key(1), HEADER, CHUNK, |r| {
                let mut b = [0u8; CHUNK];
                r.read_exact(&mut b)
            })
        };
        assert!(first_chunk_only(&file).is_ok());
        assert!(matches!(first_chunk_only(&file[..file.len() - 1]), Err(OpenFailure::Chunk(_))));
    }
}
