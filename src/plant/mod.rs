//! The plant's own protocols beside MQTT, each off by default and, when on, saying the
//! same truth as the MQTT contract (read from [`Stats`]; acknowledgements go to decide
//! as `cmd/ack` does):
//! - [`modbus`]: a Modbus TCP server for PLCs (`[modbus]`);
//! - [`sparkplug`]: a Sparkplug B edge node for Ignition and other hosts (`[sparkplug]`);
//! - [`opcua`]: an OPC UA server for SCADA and MES (`[opcua]`).

pub mod modbus;
pub mod opcua;
pub mod sparkplug;

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::config::Settings;
use crate::contract::Command;
use crate::telemetry::Stats;

/// The faces running; dropping them stops them (the edge node sends NDEATH first).
pub struct Faces {
    pub modbus: Option<modbus::ModbusServer>,
    pub sparkplug: Option<sparkplug::EdgeNode>,
    pub opcua: Option<opcua::OpcUaServer>,
}

impl Faces {
    /// Starts every enabled face; an error names the face and what was wrong.
    pub fn start(
        settings: &Settings,
        stats: Arc<Stats>,
        commands: Sender<Command>,
    ) -> Result<Faces, String> {
        let stale_after = crate::http::stale_after(settings.capture.fps);
        let modbus = if settings.modbus.enabled {
            Some(modbus::ModbusServer::start(
                &settings.modbus,
                stats.clone(),
                commands.clone(),
                stale_after,
            )?)
        } else {
            None
        };
        let sparkplug = if settings.sparkplug.enabled {
            let sp = &settings.sparkplug;
            let cfg = sparkplug::NodeConfig {
                mqtt: crate::mqtt::PublishConfig::from_settings(settings),
                client_id: format!("{}-spb", settings.client_id()),
                topics: sparkplug::NodeTopics::new(
                    &sp.group,
                    &settings.edge_node(),
                    &sp.primary_host,
                ),
                station: settings.topic_root(),
                state_dir: settings.state.dir.clone(),
                stale_after,
            };
            Some(
                sparkplug::EdgeNode::start(cfg, stats.clone(), commands.clone())
                    .map_err(|e| format!("sparkplug: {e}"))?,
            )
        } else {
            None
        };
        let opcua = if settings.opcua.enabled {
            Some(opcua::OpcUaServer::start(
                &settings.opcua,
                &settings.state.dir,
                &settings.topic_root(),
                stats,
                commands,
                stale_after,
            )?)
        } else {
            None
        };
        Ok(Faces {
            modbus,
            sparkplug,
            opcua,
        })
    }
}
