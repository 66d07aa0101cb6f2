//! The embedded MQTT broker (`mqtt.mode = "embedded"`): rumqttd inside inspectd, so a
//! single-station install and the demo need no broker of their own. PLCs and
//! `inspectd watch` connect to it like to any broker. It serves plain MQTT 3.1.1 with
//! retained messages and last wills; use an external broker for TLS and ACLs.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

/// Starts the broker on `host:port` on its own thread. Fails when the address cannot be
/// bound, so a port in use is a start-up error rather than a silent broker-less daemon.
pub fn start(host: &str, port: u16) -> Result<(), String> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("embedded broker address {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("embedded broker address {host}:{port} resolves to nothing"))?;
    // Probe the address first: rumqttd reports a failed bind only in its own thread.
    drop(
        TcpListener::bind(addr)
            .map_err(|e| format!("embedded broker cannot listen on {addr}: {e}"))?,
    );
    let server = ServerSettings {
        name: "inspectd".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("inspectd".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| e.to_string())?;
    // Wait until it listens: the address then refuses a second bind. (Connecting to find
    // out would make the broker log an aborted connection as an error.)
    for _ in 0..250 {
        if TcpListener::bind(addr).is_err() {
            info!(%addr, "Embedded MQTT broker listening.");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("embedded broker did not start listening on {addr}"))
}
