//! The active alarms, kept in `state.dir/alarms.json` so that a new process knows what
//! the PLC was told: it keeps their retained `alarm/<class>/active` topics true and
//! closes each one with its original `raised_id` (ISA-18.2: no alarm is orphaned).
//!
//! Written whole on every change: to a temporary file, fsync'd, renamed over the old one
//! and the folder fsync'd, so a crash leaves either the old or the new set, never half.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// One active alarm as the PLC knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlarm {
    pub class: String,
    /// The outbox id of its `raised` event.
    pub raised_id: Option<u64>,
    /// When it was raised, Unix milliseconds.
    pub raised_ms: u64,
    /// Raised under `alarm.latch`: it holds until acknowledged.
    pub latched: bool,
    /// Acknowledged (an unlatched alarm stays active until its class clears).
    pub acked: bool,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    v: u32,
    active: Vec<ActiveAlarm>,
}

pub struct AlarmState {
    path: PathBuf,
}

impl AlarmState {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("alarms.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The alarms active when the previous process stopped. No file on a first start
    /// (`alarms_before` false: the outbox has never held an alarm) is an empty set; no
    /// file after alarms were raised, or a file that cannot be read or parsed, is an
    /// ERROR naming it and also an empty set: the daemon starts clean rather than
    /// refusing to run.
    pub fn load(&self, alarms_before: bool) -> Vec<ActiveAlarm> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if alarms_before {
                    error!(file = %self.path.display(), "Saved alarm state is missing although alarms were raised before; starting with no alarm active.");
                } else {
                    info!(file = %self.path.display(), "No saved alarm state (first start): no alarm active.");
                }
                return Vec::new();
            }
            Err(e) => {
                error!(file = %self.path.display(), error = %e, "Cannot read the saved alarm state; starting with no alarm active.");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Saved>(&text) {
            Ok(s) if s.v == 1 => s.active,
            Ok(s) => {
                error!(file = %self.path.display(), version = s.v, "Saved alarm state has an unknown version; starting with no alarm active.");
                Vec::new()
            }
            Err(e) => {
                error!(file = %self.path.display(), error = %e, "Saved alarm state is corrupt; starting with no alarm active.");
                Vec::new()
            }
        }
    }

    /// Replaces the saved set, atomically and durably.
    pub fn save(&self, active: &[ActiveAlarm]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        serde_json::to_writer(
            &mut f,
            &Saved {
                v: 1,
                active: active.to_vec(),
            },
        )?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(class: &str, id: u64) -> ActiveAlarm {
        ActiveAlarm {
            class: class.into(),
            raised_id: Some(id),
            raised_ms: 1_764_000_000_000,
            latched: true,
            acked: false,
        }
    }

    #[test]
    fn what_is_saved_is_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = AlarmState::new(dir.path());
        assert_eq!(s.load(false), vec![], "nothing saved yet");
        assert_eq!(
            s.load(true),
            vec![],
            "missing after alarms: an error, still empty"
        );
        let set = vec![alarm("scratches", 7), alarm("patches", 9)];
        s.save(&set).unwrap();
        assert_eq!(AlarmState::new(dir.path()).load(true), set);
        s.save(&[]).unwrap();
        assert_eq!(s.load(true), vec![]);
        assert!(!dir.path().join("alarms.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_or_unreadable_file_is_a_clean_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = AlarmState::new(dir.path());
        s.save(&[alarm("scratches", 7)]).unwrap();
        let good = std::fs::read(s.path()).unwrap();
        for cut in [1, good.len() / 2, good.len() - 3] {
            std::fs::write(s.path(), &good[..cut]).unwrap();
            assert_eq!(s.load(true), vec![], "cut at {cut}");
        }
        std::fs::write(s.path(), b"{\"v\":2,\"active\":[]}").unwrap();
        assert_eq!(s.load(true), vec![]);
        std::fs::remove_file(s.path()).unwrap();
        std::fs::create_dir(s.path()).unwrap();
        assert_eq!(s.load(true), vec![], "a folder where the file should be");
    }
}
