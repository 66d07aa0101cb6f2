//! What inspectd keeps on disk under `state.dir`, so that a restart or a broker outage
//! loses nothing: the [`outbox`] of alarm events not yet acknowledged by the broker, the
//! [`alarms`] active now, and the [`evidence`] images of flagged frames.

pub mod alarms;
pub mod evidence;
pub mod outbox;
