//! The OPC UA face (`[opcua]`): an OPC UA server (async-opcua) for SCADA and MES.
//!
//! The address space follows the Machine Vision companion specification's simple inline
//! system as far as it fits a defect inspector: one object, `InspectionSystem`, in the
//! server's Objects folder, holding
//! - `SystemState` (`Preoperational` until the model is loaded, `Error` while the camera,
//!   the source or the broker is down, else `Operational`) and `SystemStateReasons`;
//! - the same values the Sparkplug node sends ([`super::sparkplug::metrics_now`]), one
//!   variable each, at the browse path of its name (`Alarm/scratches/Active` is the
//!   variable `Active` of the object `scratches` of the object `Alarm`), and the last
//!   result's defects as arrays (`Last/Labels`, `Last/Scores`, `Last/Boxes`: x, y, w, h
//!   per defect);
//! - the method `Acknowledge(AlarmId: UInt64)`, which acts like `cmd/ack` (0: all).
//!
//! Every node id is `ns=<inspectd's namespace>;s=<its path>`. Values are refreshed every
//! [`REFRESH`]; subscriptions see each change. Security: Basic256Sha256 Sign and
//! SignAndEncrypt always, no security only with `allow_none`; users from `users_file`,
//! anonymous only with `anonymous`. The server's certificate is made on first start
//! under `state.dir/opcua/pki/own/`; clients' certificates are trusted when placed in
//! `pki/trusted/` (a refused one is written to `pki/rejected/` for review).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{MethodBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    DataTypeId, DataValue, MessageSecurityMode, NodeId, ObjectId, ObjectTypeId, StatusCode,
    VariableTypeId, Variant,
};
use tracing::{error, info, warn};

use super::sparkplug::{metrics_now, Value};
use crate::config::OpcUaConfig;
use crate::contract::Command;
use crate::http::serve;
use crate::telemetry::Stats;

/// How often the variables are refreshed from the daemon's state.
pub const REFRESH: Duration = Duration::from_millis(100);
/// The root object's name (and node id).
pub const ROOT: &str = "InspectionSystem";

/// The running server; dropping it stops it.
pub struct OpcUaServer {
    url: String,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpcUaServer {
    /// The endpoint URL (`opc.tcp://host:port/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn start(
        cfg: &OpcUaConfig,
        state_dir: &Path,
        station: &str,
        stats: Arc<Stats>,
        commands: Sender<Command>,
        stale_after: Duration,
    ) -> Result<OpcUaServer, String> {
        let (host, port) = cfg
            .host_port()
            .ok_or_else(|| format!("opcua.listen {:?}: not a host and port", cfg.listen))?;
        let std_listener = serve::bind("opcua.listen", &cfg.listen, (host, port))?;
        let port = std_listener.local_addr().map_err(|e| e.to_string())?.port();
        let url = format!("opc.tcp://{host}:{port}/");
        let namespace = format!("urn:inspectd:{station}");
        // The server spawns its tasks while it is built: on this runtime, which the
        // `opcua` thread then drives.
        let runtime = serve::runtime("OPC UA")?;
        let entered = runtime.enter();
        let mut builder = ServerBuilder::new()
            .application_name(format!("inspectd {station}"))
            .application_uri(format!("urn:inspectd:{station}:server"))
            .product_uri("urn:inspectd")
            .create_sample_keypair(true)
            .pki_dir(state_dir.join("opcua/pki"))
            .host(host)
            .port(port)
            .discovery_urls(vec![url.clone()])
            .trust_client_certs(cfg.trust_all_clients)
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: namespace.clone(),
                    ..Default::default()
                },
                "inspectd",
            ));
        let mut tokens: Vec<String> = Vec::new();
        if cfg.anonymous {
            tokens.push(ANONYMOUS_USER_TOKEN_ID.to_string());
        }
        if let Some(f) = &cfg.users_file {
            for (user, password) in crate::config::read_users(f)? {
                builder =
                    builder.add_user_token(&user, ServerUserToken::user_pass(&user, &password));
                tokens.push(user);
            }
        }
        let token_ids: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut endpoints = vec![
            (
                "basic256sha256_sign_encrypt",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
            ),
            (
                "basic256sha256_sign",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::Sign,
            ),
        ];
        if cfg.allow_none {
            endpoints.push(("none", SecurityPolicy::None, MessageSecurityMode::None));
        }
        for (id, policy, mode) in endpoints {
            builder = builder.add_endpoint(id, ("/", policy, mode, &token_ids as &[&str]));
        }
        builder = builder.default_endpoint("basic256sha256_sign_encrypt");
        let (server, handle) = builder.build().map_err(|e| format!("OPC UA server: {e}"))?;
        let nm = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or("OPC UA server: no node manager")?;
        let ns = nm
            .namespaces()
            .iter()
            .find(|(_, uri)| **uri == namespace)
            .map(|(i, _)| *i)
            .ok_or("OPC UA server: inspectd's namespace is missing")?;
        let space = AddressSpace::build(&nm, ns, values(&stats, station, stale_after));
        {
            let stats = stats.clone();
            nm.inner()
                .add_method_callback(space.acknowledge.clone(), move |args| {
                    let id = match args.first() {
                        Some(Variant::UInt64(v)) => *v,
                        Some(Variant::UInt32(v)) => *v as u64,
                        Some(Variant::Int64(v)) if *v >= 0 => *v as u64,
                        Some(Variant::Int32(v)) if *v >= 0 => *v as u64,
                        _ => return Err(StatusCode::BadInvalidArgument),
                    };
                    let cmd = Command::Ack((id != 0).then_some(id));
                    match commands.try_send(cmd) {
                        Ok(()) => {
                            stats.opcua.acks.fetch_add(1, Relaxed);
                            info!(id, "OPC UA: acknowledgement handed to decide.");
                            Ok(vec![])
                        }
                        Err(_) => Err(StatusCode::BadResourceUnavailable),
                    }
                });
        }
        drop(entered);
        let (st, station_name, h) = (stats.clone(), station.to_string(), handle.clone());
        let thread = serve::spawn(
            "opcua",
            "OPC UA",
            runtime,
            std_listener,
            move |listener| async move {
                st.opcua.listening.store(1, Relaxed);
                let refresh = async {
                    let mut tick = tokio::time::interval(REFRESH);
                    let mut sent = BTreeMap::new();
                    loop {
                        tick.tick().await;
                        space.refresh(&nm, &h, &st, &station_name, stale_after, &mut sent);
                    }
                };
                tokio::select! {
                    res = server.run_with(listener) => {
                        if let Err(e) = res {
                            error!(error = %e, "OPC UA server stopped.");
                        }
                    }
                    _ = refresh => {}
                }
                st.opcua.listening.store(0, Relaxed);
            },
        )?;
        stats.opcua.enabled.store(1, Relaxed);
        info!(%url, "OPC UA: the inspection system is served.");
        Ok(OpcUaServer {
            url,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for OpcUaServer {
    fn drop(&mut self) {
        self.handle.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The nodes inspectd made, by value name.
struct AddressSpace {
    variables: BTreeMap<String, NodeId>,
    acknowledge: NodeId,
}

fn variant(v: &Value) -> Variant {
    match v {
        Value::IntValue(x) => Variant::UInt32(*x),
        Value::LongValue(x) => Variant::UInt64(*x),
        Value::FloatValue(x) => Variant::Float(*x),
        Value::DoubleValue(x) => Variant::Double(*x),
        Value::BooleanValue(x) => Variant::Boolean(*x),
        Value::StringValue(x) => Variant::String(x.as_str().into()),
        Value::BytesValue(x) => Variant::ByteString(x.clone().into()),
    }
}

fn data_type(v: &Variant) -> DataTypeId {
    match v {
        Variant::UInt32(_) => DataTypeId::UInt32,
        Variant::UInt64(_) => DataTypeId::UInt64,
        Variant::Float(_) => DataTypeId::Float,
        Variant::Double(_) => DataTypeId::Double,
        Variant::Boolean(_) => DataTypeId::Boolean,
        _ => DataTypeId::String,
    }
}

/// Every value the server shows, by its path under `InspectionSystem`: the value, its
/// data type, and whether it is an array.
type Values = BTreeMap<String, (Variant, DataTypeId, bool)>;

fn values(stats: &Stats, station: &str, stale_after: Duration) -> Values {
    let mut out = BTreeMap::new();
    let now = metrics_now(stats, station, stale_after);
    for (name, v) in &now {
        if name == "Alarm/Acknowledge" {
            continue; // a method here
        }
        let var = variant(v);
        let dt = data_type(&var);
        out.insert(name.clone(), (var, dt, false));
    }
    let flag = |k: &str| matches!(now.get(k), Some(Value::BooleanValue(true)));
    let (state, reasons) = if !flag("Health/Model Loaded") {
        ("Preoperational", "model: not loaded yet".to_string())
    } else if !flag("Health/Running") || !flag("Health/Source OK") || !flag("Health/Broker OK") {
        let mut r = Vec::new();
        for (k, what) in [
            ("Health/Running", "a pipeline stage shows no life"),
            ("Health/Source OK", "the source is not delivering"),
            ("Health/Broker OK", "the broker is not connected"),
        ] {
            if !flag(k) {
                r.push(what);
            }
        }
        ("Error", r.join("; "))
    } else {
        ("Operational", String::new())
    };
    out.insert(
        "SystemState".into(),
        (Variant::String(state.into()), DataTypeId::String, false),
    );
    out.insert(
        "SystemStateReasons".into(),
        (Variant::String(reasons.into()), DataTypeId::String, false),
    );
    let last = stats.plant.last().unwrap_or_default();
    let labels = stats.live.labels();
    let names: Vec<String> = last
        .items
        .iter()
        .map(|(l, _, _)| labels.get(*l).cloned().unwrap_or_default())
        .collect();
    let scores: Vec<f32> = last
        .items
        .iter()
        .map(|(_, s, _)| (s * 1000.0).round() / 1000.0)
        .collect();
    let boxes: Vec<u32> = last.items.iter().flat_map(|(_, _, b)| *b).collect();
    out.insert(
        "Last/Labels".into(),
        (Variant::from(names), DataTypeId::String, true),
    );
    out.insert(
        "Last/Scores".into(),
        (Variant::from(scores), DataTypeId::Float, true),
    );
    out.insert(
        "Last/Boxes".into(),
        (Variant::from(boxes), DataTypeId::UInt32, true),
    );
    out
}

impl AddressSpace {
    fn build(nm: &SimpleNodeManager, ns: u16, initial: Values) -> AddressSpace {
        let mut sp = nm.address_space().write();
        let root = NodeId::new(ns, ROOT);
        ObjectBuilder::new(&root, ROOT, ROOT)
            .organized_by(ObjectId::ObjectsFolder)
            .has_type_definition(ObjectTypeId::BaseObjectType)
            .insert(&mut *sp);
        let mut objects: BTreeMap<String, NodeId> = BTreeMap::new();
        let mut variables = BTreeMap::new();
        for (name, (value, dt, array)) in initial {
            let mut parent = root.clone();
            let parts: Vec<&str> = name.split('/').collect();
            for depth in 1..parts.len() {
                let path = parts[..depth].join("/");
                let id = objects.entry(path.clone()).or_insert_with(|| {
                    let id = NodeId::new(ns, format!("{ROOT}/{path}"));
                    ObjectBuilder::new(&id, parts[depth - 1], parts[depth - 1])
                        .component_of(parent.clone())
                        .has_type_definition(ObjectTypeId::BaseObjectType)
                        .insert(&mut *sp);
                    id
                });
                parent = id.clone();
            }
            let id = NodeId::new(ns, format!("{ROOT}/{name}"));
            let leaf = parts[parts.len() - 1];
            let mut b = VariableBuilder::new(&id, leaf, leaf)
                .data_type(dt)
                .value(value)
                .component_of(parent)
                .has_type_definition(VariableTypeId::BaseDataVariableType);
            if array {
                b = b.value_rank(1);
            }
            b.insert(&mut *sp);
            variables.insert(name, id);
        }
        let acknowledge = NodeId::new(ns, format!("{ROOT}/Acknowledge"));
        MethodBuilder::new(&acknowledge, "Acknowledge", "Acknowledge")
            .executable(true)
            .user_executable(true)
            .component_of(root.clone())
            .input_args(
                &mut *sp,
                &NodeId::new(ns, format!("{ROOT}/Acknowledge/InputArguments")),
                &[("AlarmId", DataTypeId::UInt64).into()],
            )
            .insert(&mut *sp);
        AddressSpace {
            variables,
            acknowledge,
        }
    }

    /// Writes every value that changed since the last call.
    fn refresh(
        &self,
        nm: &SimpleNodeManager,
        handle: &ServerHandle,
        stats: &Stats,
        station: &str,
        stale_after: Duration,
        sent: &mut BTreeMap<String, Variant>,
    ) {
        let now = values(stats, station, stale_after);
        let changed: Vec<(&NodeId, Variant)> = now
            .into_iter()
            .filter_map(|(name, (v, _, _))| {
                let id = self.variables.get(&name)?;
                if sent.get(&name) == Some(&v) {
                    return None;
                }
                sent.insert(name, v.clone());
                Some((id, v))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        if let Err(e) = nm.set_values(
            handle.subscriptions(),
            changed
                .into_iter()
                .map(|(id, v)| (id, None, DataValue::new_now(v))),
        ) {
            warn!(status = %e, "OPC UA: could not update a value.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(stats: &Stats) -> (Variant, String) {
        let v = values(stats, "inspectd/s/l/st", Duration::from_secs(2));
        let reasons = match &v["SystemStateReasons"].0 {
            Variant::String(s) => s.to_string(),
            other => panic!("reasons: {other:?}"),
        };
        (v["SystemState"].0.clone(), reasons)
    }

    #[test]
    fn the_system_state_says_preoperational_then_error_with_its_reasons() {
        let stats = Stats::default();
        let (s, why) = state(&stats);
        assert_eq!(s, Variant::String("Preoperational".into()));
        assert!(why.contains("model"), "{why}");
        stats.model_loaded.store(1, Relaxed);
        let (s, why) = state(&stats);
        assert_eq!(s, Variant::String("Error".into()));
        assert!(why.contains("the broker is not connected"), "{why}");
        assert!(why.contains("the source is not delivering"), "{why}");
        stats.mqtt_connected.store(1, Relaxed);
        let (_, why) = state(&stats);
        assert!(!why.contains("broker"), "{why}");
    }

    #[test]
    fn the_last_result_is_served_as_arrays_with_their_types() {
        let v = values(&Stats::default(), "inspectd/s/l/st", Duration::from_secs(2));
        for (name, dt) in [
            ("Last/Labels", DataTypeId::String),
            ("Last/Scores", DataTypeId::Float),
            ("Last/Boxes", DataTypeId::UInt32),
        ] {
            let (value, t, array) = &v[name];
            assert!(*array && *t == dt, "{name}");
            assert!(matches!(value, Variant::Array(_)), "{name}: {value:?}");
        }
        assert!(
            !v.contains_key("Alarm/Acknowledge"),
            "a method, not a variable"
        );
    }
}
