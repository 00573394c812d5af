//! The log's writer: lines go through a bounded queue (`log.queue`) to one thread that writes them to stderr,
//! so that the access log line of every request costs the request's thread no write system call (issue 13).
//!
//! Invariants:
//! - A request never waits for stderr: when the queue is full the line is dropped and counted
//!   ([`LogWriter::dropped`]); the next line written says how many were lost.
//! - Lines queued before the process exits are written: [`LogGuard`] (held by `main`) flushes the queue when it is
//!   dropped, waiting at most [`FLUSH_WAIT`].
//! - The writer thread writes what is queued in one system call per batch, not one per line.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// How long the guard waits for the queue to be written at exit.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    /// Written everything before this; answer on the channel.
    Flush(mpsc::Sender<()>),
}

/// A `tracing_subscriber` writer factory: each event's line is queued for the writer thread.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// Flushes the queue when dropped (at the end of `main`).
pub struct LogGuard {
    tx: SyncSender<Message>,
}

impl LogWriter {
    /// Starts the writer thread with a queue of `queue` lines; `None` when the thread cannot be started (the
    /// caller then writes to stderr directly).
    pub fn start(queue: usize) -> Option<(Self, LogGuard)> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        std::thread::Builder::new().name("dcr-proxy-log".into()).spawn(move || write_lines(rx)).ok()?;
        Some((Self { tx: tx.clone(), dropped: Arc::new(AtomicU64::new(0)) }, LogGuard { tx }))
    }

    /// Lines lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn queue(&self, line: &[u8]) {
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(line.len() + if lost > 0 { 64 } else { 0 });
        if lost > 0 {
            let _ = writeln!(bytes, "log: {lost} lines dropped (the log queue was full)");
        }
        bytes.extend_from_slice(line);
        match self.tx.try_send(Message::Line(bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(lost + 1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(Message::Line(bytes))) => {
                let _ = std::io::stderr().write_all(&bytes);
            }
            Err(TrySendError::Disconnected(Message::Flush(_))) => {}
        }
    }
}

fn write_lines(rx: Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => batch.extend_from_slice(&line),
                Message::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < 64 * 1024 { rx.try_recv().ok() } else { None };
        }
        let _ = std::io::stderr().lock().write_all(&batch);
        batch.clear();
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// One event's writer: `tracing_subscriber`'s formatter writes the whole line, then the line is queued.
pub struct LineWriter<'a> {
    to: &'a LogWriter,
    line: Vec<u8>,
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.to.queue(&self.line);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { to: self, line: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A queue nobody reads: the thread is not started.
        let (tx, _rx) = mpsc::sync_channel(1);
        let writer = LogWriter { tx, dropped: Arc::new(AtomicU64::new(0)) };
        writer.queue(b"one\n");
        writer.queue(b"two\n");
        writer.queue(b"three\n");
        assert_eq!(writer.dropped(), 2);
    }

    #[test]
    fn the_guard_returns_once_the_queue_is_written() {
        let Some((writer, guard)) = LogWriter::start(16) else { return };
        for _ in 0..10 {
            writer.queue(b"");
        }
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < FLUSH_WAIT);
        assert_eq!(writer.dropped(), 0);
    }
}
