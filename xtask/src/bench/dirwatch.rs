//! Catches short-lived entries of a directory: a thread lists it every millisecond and keeps the
//! birth time (statx btime, Unix ns) of every entry it sees. Used on bpfexec's
//! `<state_dir>/tasks`, whose per-task dirs StartTask creates and DestroyTask removes, often
//! before a batch job's allocation is reported complete.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

/// A running watcher; [`DirWatch::finish`] stops it and returns what it saw.
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<String, i64>>,
}

fn birth_ns(path: &std::path::Path) -> Option<i64> {
    let born = std::fs::metadata(path).ok()?.created().ok()?;
    i64::try_from(born.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

impl DirWatch {
    pub fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !seen.contains_key(&name)
                            && let Some(t) = birth_ns(&e.path())
                        {
                            seen.insert(name, t);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        Self { stop, thread }
    }

    /// Stops the watcher; entry name → birth time (Unix ns).
    pub fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_short_lived_dir() {
        let root = std::env::temp_dir().join(format!("xtask-dirwatch-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let watch = DirWatch::start(root.clone());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::create_dir(root.join("a_1")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::remove_dir(root.join("a_1")).unwrap();
        let seen = watch.finish();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(seen.get("a_1").is_some_and(|t| *t > 0), "{seen:?}");
    }
}
