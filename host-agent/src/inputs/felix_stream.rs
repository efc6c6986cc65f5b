//! The I/O around a [`Session`](capo_felix::session::Session): reading frames from Felix, recording them, and
//! sending `ProcessStatusUpdate` back; one Felix stream served into the daemon
//! ([`serve_connection`]), and messages fed to it as if from Felix ([`feed`]).

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capo_proto::felix::v3_32 as pb;

use capo_felix::frame::{Frame, FrameError, FrameReader, FrameWriter};
use capo_felix::session::SessionError;

use crate::core::daemon::{lock, SharedDaemon, Source};

/// Why a stream stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Framing or transport failure.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Protocol violation or unusable content.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The recording file could not be written.
    #[error("recording frame {frame}: {source}")]
    Record {
        /// Frame number.
        frame: u64,
        /// The I/O error.
        source: io::Error,
    },
}

/// Writes every received frame verbatim (length header and body), so a recording
/// replays byte for byte like what Felix wrote to fd 3.
pub struct Recorder {
    out: BufWriter<std::fs::File>,
}

impl Recorder {
    /// Creates (truncates) the recording file.
    ///
    /// The recording holds the whole policy: it is created owner-only (0600, and an
    /// existing file is made so), never through a symlink (`O_NOFOLLOW`), and only a
    /// regular file is truncated and written (a FIFO or device is refused without
    /// blocking).
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symlink: not followed for a recording",
                        path.display()
                    ),
                ),
                _ => e,
            })?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
        Ok(Recorder {
            out: BufWriter::new(file),
        })
    }

    /// Appends one frame and flushes, so a crash loses at most the frame being read.
    pub(crate) fn record(&mut self, frame: &Frame) -> io::Result<()> {
        let len = frame.bytes.len() as u64;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&frame.bytes)?;
        self.out.flush()
    }
}

/// Reads frames until a clean end of stream, recording each (when asked) and
/// handing it to `apply`. Returns at the first error, with nothing of the bad frame
/// applied.
pub fn run<R: Read>(
    reader: &mut FrameReader<R>,
    mut recorder: Option<&mut Recorder>,
    mut apply: impl FnMut(&Frame) -> Result<(), SessionError>,
) -> Result<(), StreamError> {
    while let Some(frame) = reader.read_frame()? {
        if let Some(r) = recorder.as_deref_mut() {
            r.record(&frame).map_err(|source| StreamError::Record {
                frame: frame.index,
                source,
            })?;
        }
        apply(&frame)?;
    }
    Ok(())
}

/// Sends `ProcessStatusUpdate` every `interval` until `stop` is set or a write
/// fails (Felix has gone). Runs on its own thread; it is the only writer.
pub fn spawn_status_writer<W: Write + Send + 'static>(
    out: W,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut writer = FrameWriter::new(out);
        let tick = Duration::from_millis(100).min(interval);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let msg = status_message(started.elapsed(), SystemTime::now());
                if let Err(e) = writer.write_message(&msg) {
                    tracing::warn!(error = %e, "cannot send status to Felix; stopping status reports");
                    return;
                }
                next += interval;
            }
            std::thread::sleep(tick);
        }
    })
}

/// A `FromDataplane` carrying `ProcessStatusUpdate`.
pub fn status_message(uptime: Duration, now: SystemTime) -> pb::FromDataplane {
    pb::FromDataplane {
        sequence_number: 0,
        payload: Some(pb::from_dataplane::Payload::ProcessStatusUpdate(
            pb::ProcessStatusUpdate {
                iso_timestamp: humantime::format_rfc3339_seconds(now).to_string(),
                uptime: uptime.as_secs_f64(),
            },
        )),
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// Felix closed the stream.
    Eof,
    /// A protocol violation or bad input: the connection is dropped so that Felix
    /// starts over with a fresh snapshot.
    Resync(StreamError),
    /// The recording file could not be created.
    RecordSetup(std::io::Error),
}

/// Serves one Felix stream: `input` carries `ToDataplane` frames; status reports
/// go to `output` when given. Returns when the stream ends or fails.
pub fn serve_connection<R: Read, W: Write + Send + 'static>(
    daemon: &SharedDaemon,
    source: Source,
    input: R,
    output: Option<W>,
) -> ConnectionEnd {
    let opts = lock(daemon).options().clone();
    let mut recorder = match &opts.record {
        Some(path) => match Recorder::create(path) {
            Ok(r) => Some(r),
            Err(e) => return ConnectionEnd::RecordSetup(e),
        },
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let status = output.map(|w| spawn_status_writer(w, opts.status_interval, stop.clone()));
    // A read timeout on the stream (the Felix socket's) bounds only the time inside a
    // frame; between frames Felix may be silent for as long as it likes.
    let mut reader =
        FrameReader::with_max_frame_len(input, opts.max_frame_len).idle_between_frames();
    lock(daemon).begin(source);
    // Frames are read without the lock; each is applied under it.
    let result = run(&mut reader, recorder.as_mut(), |frame| {
        lock(daemon).on_frame(frame).map(|_| ())
    });
    // The status writer stops at its next tick, or when its write fails once the
    // caller closes the connection; it is not joined, so a peer that stopped reading
    // cannot hold the agent here.
    stop.store(true, Ordering::Relaxed);
    drop(status);
    lock(daemon).end();
    match result {
        Ok(()) => ConnectionEnd::Eof,
        Err(e) => ConnectionEnd::Resync(e),
    }
}

/// Applies messages as if they came from Felix on the current connection; returns
/// false (after logging) if one is refused, in which case the rest are not applied.
pub fn feed(daemon: &SharedDaemon, msgs: &[capo_proto::felix::v3_32::ToDataplane]) -> bool {
    let bytes = capo_felix::frame::encode_frames(msgs);
    let mut reader = FrameReader::new(bytes.as_slice());
    match run(&mut reader, None, |frame| {
        lock(daemon).on_frame(frame).map(|_| ())
    }) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "update refused");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn status_message_is_a_process_status_update() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let msg = status_message(Duration::from_millis(12_500), t);
        let bytes = msg.encode_to_vec();
        let back = pb::FromDataplane::decode(bytes.as_slice()).unwrap();
        match back.payload {
            Some(pb::from_dataplane::Payload::ProcessStatusUpdate(s)) => {
                assert_eq!(s.iso_timestamp, "2023-11-14T22:13:20Z");
                assert!((s.uptime - 12.5).abs() < 1e-9);
            }
            other => panic!("unexpected payload {other:?}"),
        }
        // Field 3 of FromDataplane, length-delimited.
        assert_eq!(bytes[0], 0x1a);
    }

    #[test]
    fn status_writer_sends_frames_until_stopped() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_status_writer(buf.clone(), Duration::from_millis(20), stop.clone());
        std::thread::sleep(Duration::from_millis(150));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        let bytes = buf.0.lock().unwrap().clone();
        let mut reader = FrameReader::new(bytes.as_slice());
        let mut n = 0;
        while let Some(f) = reader.read_frame().unwrap() {
            pb::FromDataplane::decode(f.bytes.as_slice()).unwrap();
            n += 1;
        }
        assert!(n >= 2, "expected several status frames, got {n}");
    }
}

#[cfg(test)]
mod recorder_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::Recorder;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("capo-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn recordings_are_owner_only_and_never_follow_symlinks() {
        let d = dir("perm");
        let rec = d.join("felix.frames");
        drop(Recorder::create(&rec).unwrap());
        assert_eq!(mode(&rec), 0o600);
        // An existing, world-readable file is truncated and made owner-only.
        std::fs::write(&rec, b"old").unwrap();
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Recorder::create(&rec).unwrap());
        assert_eq!(mode(&rec), 0o600);
        assert_eq!(std::fs::metadata(&rec).unwrap().len(), 0);
        // A symlink planted at the path is refused; its target is untouched.
        let target = d.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("link.frames");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Recorder::create(&link).err().unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A FIFO is refused without blocking.
        let fifo = d.join("fifo.frames");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(Recorder::create(&fifo).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
