//! The outbox: events on disk until the broker has acknowledged them (alarms, and with
//! `[strip]` each finished defect track and each finished coil).
//!
//! One append-only file, `state.dir/outbox.log`, of records
//! `[len: u32 LE][crc32 of body: u32 LE][body]`, where the body is a kind byte and an id
//! (u64 LE) and, for events, the payload published on the event's topic:
//!
//! - `E id payload`: an alarm event (`alarm`), fsync'd before anything publishes it;
//! - `D id payload`, `C id payload`: a `defect` event, a `coil` summary, the same way;
//! - `A id`: the broker acknowledged event `id` (not fsync'd: losing one only means the
//!   event is published again, and consumers deduplicate by id);
//! - `S next_id`: written by compaction, so ids keep increasing after acked events are gone.
//!
//! On open the file is replayed; a torn or corrupt tail (a power cut mid-write) is cut
//! off with a warning. When pending events exceed `max_bytes`, the oldest are dropped
//! with an ERROR and counted: never silently.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{error, info, warn};

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

const EVENT: u8 = b'E';
const DEFECT: u8 = b'D';
const COIL: u8 = b'C';
const ACK: u8 = b'A';
const SEQ: u8 = b'S';
const HEADER: usize = 8;

/// What an event is, and so the topic it is published on. Ids are shared: one sequence
/// for every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Alarm,
    Defect,
    Coil,
}

impl EventKind {
    fn byte(self) -> u8 {
        match self {
            EventKind::Alarm => EVENT,
            EventKind::Defect => DEFECT,
            EventKind::Coil => COIL,
        }
    }

    fn from_byte(b: u8) -> Option<EventKind> {
        match b {
            EVENT => Some(EventKind::Alarm),
            DEFECT => Some(EventKind::Defect),
            COIL => Some(EventKind::Coil),
            _ => None,
        }
    }
}

pub struct Outbox {
    path: PathBuf,
    file: File,
    file_len: u64,
    pending: BTreeMap<u64, (EventKind, Vec<u8>)>,
    pending_bytes: u64,
    next_id: u64,
    max_bytes: u64,
    dropped: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, replaying what is there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let path = dir.join("outbox.log");
        let io_err = |source| OutboxError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let mut pending = BTreeMap::new();
        let mut next_id = 1u64;
        let mut at = 0usize;
        while at < bytes.len() {
            match parse_record(&bytes[at..]) {
                Some((kind, id, payload, used)) => {
                    match (kind, EventKind::from_byte(kind)) {
                        (_, Some(event)) => {
                            pending.insert(id, (event, payload.to_vec()));
                            next_id = next_id.max(id + 1);
                        }
                        (ACK, _) => {
                            pending.remove(&id);
                        }
                        (SEQ, _) => next_id = next_id.max(id),
                        _ => {}
                    }
                    at += used;
                }
                None => {
                    warn!(
                        path = %path.display(),
                        offset = at,
                        cut_bytes = bytes.len() - at,
                        "Outbox ends in a torn or corrupt record (a write cut short); skipped it."
                    );
                    break;
                }
            }
        }
        let mut outbox = Outbox {
            path,
            file,
            file_len: bytes.len() as u64,
            pending_bytes: pending.values().map(|(_, p)| p.len() as u64).sum(),
            pending,
            next_id,
            max_bytes,
            dropped: 0,
        };
        outbox.compact()?;
        if !outbox.pending.is_empty() {
            info!(
                pending = outbox.pending.len(),
                next_id, "Outbox holds events not yet acknowledged; they will be sent again."
            );
        }
        Ok(outbox)
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Stores a new alarm event durably and returns its id. `payload` builds the bytes
    /// from the id.
    pub fn append(&mut self, payload: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        self.append_event(EventKind::Alarm, payload)
    }

    /// Stores a new event of `kind` durably and returns its id.
    pub fn append_event(
        &mut self,
        kind: EventKind,
        payload: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, OutboxError> {
        let id = self.next_id;
        let body = payload(id);
        self.write_record(kind.byte(), id, &body)?;
        self.file.sync_data().map_err(|source| OutboxError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.next_id += 1;
        self.pending_bytes += body.len() as u64;
        self.pending.insert(id, (kind, body));
        while self.pending_bytes > self.max_bytes && self.pending.len() > 1 {
            let (old, (_, body)) = self.pending.pop_first().expect("pending is not empty");
            self.pending_bytes -= body.len() as u64;
            self.dropped += 1;
            error!(
                id = old,
                max_bytes = self.max_bytes,
                "Outbox full; dropped the oldest unacknowledged event."
            );
            self.write_record(ACK, old, &[])?;
        }
        Ok(id)
    }

    /// The broker acknowledged `id`: forget it.
    pub fn ack(&mut self, id: u64) -> Result<(), OutboxError> {
        if let Some((_, body)) = self.pending.remove(&id) {
            self.pending_bytes -= body.len() as u64;
            self.write_record(ACK, id, &[])?;
            if self.file_len > 64 * 1024 && self.file_len > 4 * self.pending_bytes {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Events not yet acknowledged, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pending.iter().map(|(&id, (_, p))| (id, p.as_slice()))
    }

    /// Events not yet acknowledged with their kind, oldest first.
    pub fn pending_events(&self) -> impl Iterator<Item = (u64, EventKind, &[u8])> {
        self.pending
            .iter()
            .map(|(&id, (kind, p))| (id, *kind, p.as_slice()))
    }

    /// Bytes of the events waiting for the broker.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Events dropped because the outbox was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn write_record(&mut self, kind: u8, id: u64, payload: &[u8]) -> Result<(), OutboxError> {
        let rec = encode(kind, id, payload);
        self.file
            .write_all(&rec)
            .map_err(|source| OutboxError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.file_len += rec.len() as u64;
        Ok(())
    }

    /// Rewrites the file with only the sequence and the pending events.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let tmp = self.path.with_extension("tmp");
        let io_err = |source| OutboxError::Io {
            path: tmp.clone(),
            source,
        };
        let mut buf = encode(SEQ, self.next_id, &[]);
        for (&id, (kind, p)) in &self.pending {
            buf.extend_from_slice(&encode(kind.byte(), id, p));
        }
        {
            let mut f = File::create(&tmp).map_err(io_err)?;
            f.write_all(&buf).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let path = self.path.clone();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })?;
        file.seek(SeekFrom::End(0))
            .map_err(|source| OutboxError::Io { path, source })?;
        self.file = file;
        self.file_len = buf.len() as u64;
        Ok(())
    }
}

fn encode(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + payload.len());
    body.push(kind);
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(HEADER + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// (kind, id, payload, bytes used), or None for a torn or corrupt record.
fn parse_record(b: &[u8]) -> Option<(u8, u64, &[u8], usize)> {
    if b.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
    if len < 9 || b.len() < HEADER + len {
        return None;
    }
    let body = &b[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let id = u64::from_le_bytes(body[1..9].try_into().ok()?);
    Some((body[0], id, &body[9..], HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Vec<u8> {
        format!("{{\"id\":{id}}}").into_bytes()
    }

    #[test]
    fn pending_events_and_ids_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(o.append(event).unwrap(), 1);
        assert_eq!(o.append(event).unwrap(), 2);
        assert_eq!(o.append(event).unwrap(), 3);
        o.ack(2).unwrap();
        drop(o);
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        let ids: Vec<u64> = o.pending().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(o.pending().next().unwrap().1, b"{\"id\":1}");
        assert_eq!(o.next_id(), 4);
    }

    #[test]
    fn events_keep_their_kind_across_a_reopen_and_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        o.append(event).unwrap();
        o.append_event(EventKind::Defect, event).unwrap();
        o.append_event(EventKind::Coil, event).unwrap();
        o.ack(1).unwrap();
        drop(o);
        // Opening compacts: the two pending events are rewritten with their kinds.
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        drop(o);
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        let kinds: Vec<(u64, EventKind)> = o.pending_events().map(|(id, k, _)| (id, k)).collect();
        assert_eq!(kinds, vec![(2, EventKind::Defect), (3, EventKind::Coil)]);
    }

    #[test]
    fn ids_keep_increasing_after_everything_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..5 {
            let id = o.append(event).unwrap();
            o.ack(id).unwrap();
        }
        drop(o);
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(o.pending_count(), 0);
        assert_eq!(o.append(event).unwrap(), 6);
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        o.append(event).unwrap();
        o.append(event).unwrap();
        drop(o);
        // A power cut in the middle of writing a third record: half a record at the end.
        let rec = encode(EVENT, 3, &event(3));
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("outbox.log"))
            .unwrap();
        f.write_all(&rec[..rec.len() / 2]).unwrap();
        drop(f);
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            o.pending().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // The torn bytes are gone: the next record appended is read back whole.
        assert_eq!(o.append(event).unwrap(), 3);
        drop(o);
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            o.pending().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_corrupt_record_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
        o.append(event).unwrap();
        drop(o);
        let path = dir.path().join("outbox.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(o.pending_count(), 0);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 20).unwrap();
        for _ in 0..4 {
            o.append(event).unwrap();
        }
        // Each payload is 8 bytes; 20 bytes hold two.
        assert_eq!(
            o.pending().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(o.dropped(), 2);
        drop(o);
        let o = Outbox::open(dir.path(), 20).unwrap();
        assert_eq!(
            o.pending().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }
}
