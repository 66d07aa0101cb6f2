//! inspectd: an edge daemon for unattended visual inspection of steel surfaces.
//!
//! Frames flow through one thread per stage, in the order of these modules:
//! [`capture`] → [`preprocess`] → [`classify`] → [`decide`] → [`publish`], wired by
//! [`pipeline`] and run by [`daemon`]. [`config`] is the operator's interface, [`outbox`]
//! keeps alarms on disk until the broker has them, [`alarm_state`] the active alarms
//! across restarts, [`telemetry`] holds logs and counters. [`health`] measures each
//! frame (dark, saturated, no contrast, frozen), [`evidence`] keeps the frames of alarms,
//! [`http`] serves [`metrics`], the health endpoints and the [`live`] page.
//! [`inspect`], [`eval`] and [`watch`] serve the command line.

pub mod alarm_state;
pub mod broker;
pub mod camera;
pub mod capture;
pub mod classify;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod eval;
pub mod evidence;
pub mod frame;
pub mod health;
pub mod http;
pub mod inspect;
pub mod live;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod preprocess;
pub mod publish;
pub mod reorder;
pub mod stage;
pub mod telemetry;
pub mod watch;
