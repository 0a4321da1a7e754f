//! Logs of the code under test, captured for assertions: one global
//! subscriber per test binary, writing into a buffer. Tests of a binary run
//! in parallel, so assert on lines that name your own accounts.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing (info and above), once per test binary.
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_writer(move || Writer(Arc::clone(&shared)))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
        buffer
    });
}

/// The lines captured so far that contain `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    let Some(buffer) = LOGS.get() else { return Vec::new() };
    let text = String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}
