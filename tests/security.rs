//! A broker with TLS and a password: inspectd connects with the CA file and the password
//! read from a file; with a wrong password it says so clearly, keeps running and retries,
//! and connects once the file is right. Certificates are made by the test with openssl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `localhost`, signed by it.
fn make_certs(dir: &Path) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=inspectd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]));
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]));
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]));
}

/// A mosquitto of a test's own, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto with the config text `conf`, written into `dir` (whose files it must be able
/// to read: it drops to its own user), once `port` listens.
fn mosquitto_with(dir: &Path, conf: &str, port: u16) -> Broker {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf).unwrap();
    Broker(spawn_mosquitto(&path, &dir.join("mosquitto.log"), port))
}

struct TlsBroker {
    _broker: Broker,
    tls_port: u16,
    plain_port: u16,
}

/// mosquitto with a TLS listener that needs user `inspectd` / `s3cret`, and a plain
/// anonymous listener for the test's own subscriber.
fn tls_broker(dir: &Path) -> TlsBroker {
    run(Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(dir.join("passwd"))
        .args(["inspectd", "s3cret"]));
    let ports = free_ports(2);
    let (tls_port, plain_port) = (ports[0], ports[1]);
    let conf = format!(
        "per_listener_settings true\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         allow_anonymous false\npassword_file {d}/passwd\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
        d = dir.display()
    );
    TlsBroker {
        _broker: mosquitto_with(dir, &conf, tls_port),
        tls_port,
        plain_port,
    }
}

#[test]
fn tls_with_a_password_file_connects_and_a_wrong_password_is_reported_and_retried() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let broker = tls_broker(certs.path());
    let secrets = tempfile::tempdir().unwrap();
    let password = secrets.path().join("mqtt.password");
    std::fs::write(&password, "wrong\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let images = image_folder(&["crazing_1", "patches_12"]);
    let mqtt = format!(
        "[mqtt]\nhost = \"localhost\"\nport = {}\nusername = \"inspectd\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 300\n",
        broker.tls_port,
        password.display(),
        certs.path().join("ca.pem").display()
    );
    let st = station(
        images.path(),
        broker.tls_port,
        true,
        10.0,
        (5, 3, 1, false),
        &mqtt,
    );
    let sub = Subscriber::start(broker.plain_port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);

    assert!(
        wait_until(Duration::from_secs(30), || daemon
            .log_text()
            .contains("refused the connection")),
        "a wrong password is reported\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("readable by every user"),
        "a world-readable password file is warned about"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon keeps running"
    );
    assert!(sub.on(&format!("{}/result", st.root)).is_empty());

    // The operator fixes the file: the next attempt reads it and gets in, over TLS.
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let result = format!("{}/result", st.root);
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .filter(|m| m.topic == result)
            .count()
            >= 2),
        "{}",
        daemon.log_text()
    );
    assert!(sub
        .on(&format!("{}/status", st.root))
        .iter()
        .any(|m| m.payload == "online"));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(5)), Some(0));
}

/// A client certificate (X.509 v3: rustls refuses v1) for `cn`, signed by the test CA
/// made by [`make_certs`].
fn make_client_cert(dir: &Path, cn: &str) {
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &format!("{cn}.key"),
        "-out",
        &format!("{cn}.csr"),
    ]));
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        &format!("{cn}.csr"),
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "client.ext",
        "-out",
        &format!("{cn}.pem"),
    ]));
}

#[test]
fn a_broker_that_requires_a_client_certificate_lets_inspectd_in_with_one_and_not_without() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    make_client_cert(certs.path(), "inspectd");
    let ports = free_ports(2);
    let (tls_port, plain_port) = (ports[0], ports[1]);
    let d = certs.path().display();
    let _broker = mosquitto_with(
        certs.path(),
        &format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
        ),
        tls_port,
    );
    let images = image_folder(&["crazing_1", "patches_12"]);
    let tls = |client_cert: bool| {
        let mut t = format!(
            "[mqtt]\nhost = \"localhost\"\nport = {tls_port}\nca_file = \"{d}/ca.pem\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 300\n"
        );
        if client_cert {
            t += &format!("cert_file = \"{d}/inspectd.pem\"\nkey_file = \"{d}/inspectd.key\"\n");
        }
        t
    };

    // Without a certificate the broker turns it away: said in the log, still running.
    let st = station(
        images.path(),
        tls_port,
        true,
        10.0,
        (5, 3, 1, false),
        &tls(false),
    );
    let sub = Subscriber::start(plain_port, &format!("{}/#", st.root), false);
    let daemon = Daemon::start(&st.config);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let log = daemon.log_text();
            log.contains("Cannot reach the MQTT broker") || log.contains("Lost the MQTT broker")
        }),
        "{}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(sub.on(&format!("{}/result", st.root)).is_empty());
    drop(daemon);

    // With its certificate it gets in, and results flow.
    let st = station(
        images.path(),
        tls_port,
        true,
        10.0,
        (5, 3, 1, false),
        &tls(true),
    );
    let sub = Subscriber::start(plain_port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    let result = format!("{}/result", st.root);
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .filter(|m| m.topic == result)
            .count()
            >= 2),
        "{}",
        daemon.log_text()
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(5)), Some(0));
}

/// README's ACL, for a station whose topic root is `root`.
fn readme_acl(root: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("    # /etc/mosquitto/acl\n")
        .expect("README shows an ACL");
    readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| {
            l.trim_start()
                .replace("inspectd/plant1/line1/station1", root)
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn inspectd_runs_under_the_readme_acl_and_the_plc_can_read_and_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let passwd = dir.path().join("passwd");
    run(Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["inspectd", "s3cret"]));
    run(Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwd)
        .args(["plc", "plcpw"]));
    let images = image_folder(&["scratches_114", "scratches_13", "scratches_114"]);
    let secret = dir.path().join("mqtt.password");
    let st = station(
        images.path(),
        port,
        true,
        5.0,
        (3, 2, 0, true),
        &format!(
            "[mqtt]\nport = {port}\nusername = \"inspectd\"\npassword_file = \"{}\"\n",
            secret.display()
        ),
    );
    let acl = readme_acl(&st.root);
    assert!(acl.contains("user plc") && acl.contains(&st.root), "{acl}");
    std::fs::write(dir.path().join("acl"), &acl).unwrap();
    let d = dir.path().display();
    let _broker = mosquitto_with(
        dir.path(),
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n"
        ),
        port,
    );
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let plc = Subscriber::start_as(
        port,
        &format!("{}/#", st.root),
        false,
        Some(("plc", "plcpw")),
    );
    let _daemon = Daemon::start(&st.config);
    let alarm = format!("{}/alarm", st.root);
    assert!(
        plc.wait_for(Duration::from_secs(60), |m| m
            .iter()
            .any(|m| m.topic == alarm)),
        "the PLC reads the station's alarms"
    );
    assert!(plc
        .on(&format!("{}/result", st.root))
        .iter()
        .any(|m| m.json()["v"] == 1));
    // The PLC acknowledges; inspectd may read cmd/ack, so the latched alarm clears.
    let raised = plc.on(&alarm)[0].json();
    plc.publish(&format!("{}/cmd/ack", st.root), &raised["id"].to_string());
    assert!(
        plc.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| m.topic
            == alarm
            && m.payload.contains("\"event\":\"acked\""))),
        "inspectd read the PLC's cmd/ack through the ACL"
    );
}
