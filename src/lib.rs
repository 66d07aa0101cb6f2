//! inspectd: an edge daemon for unattended visual inspection of steel surfaces.
//!
//! Read the tree in the order frames flow:
//! - [`stages`]: capture → preprocess → classify → decide, one thread each (classify: N
//!   workers), each stage's loop in its own file;
//! - [`mqtt`]: the broker side, publishing what decide hands on (and an embedded broker);
//!   [`contract`] is what it publishes: every topic and payload a PLC reads;
//! - [`state`]: what is kept on disk under `state.dir` (the alarm outbox, the active
//!   alarms, evidence images);
//! - [`http`]: metrics, health endpoints, the live page and evidence over HTTP;
//! - [`plant`]: the plant's own protocols (OPC UA, Modbus TCP, Sparkplug B), off by default;
//! - [`pipeline`] wires the stages and [`daemon`] runs them; [`cli`] serves the other
//!   commands (classify, eval, watch).
//!
//! Underneath everything: [`config`] (the operator's interface), [`frame`] (the unit of
//! work and its pool), [`telemetry`] (logs, counters, heartbeats, the live view).
//! Imports flow one way: `cli`, `daemon`, `pipeline` → `plant` → `http`, `mqtt` → `stages` →
//! `state` → `contract`, `telemetry` → `frame`, `config`.

pub mod cli;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod frame;
pub mod http;
pub mod mqtt;
pub mod pipeline;
pub mod plant;
pub mod stages;
pub mod state;
pub mod telemetry;
