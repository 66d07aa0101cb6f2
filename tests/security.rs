//! A broker with TLS and a password: inspectd connects with the CA file and the password
//! read from a file; with a wrong password it says so clearly, keeps running and retries,
//! and connects once the file is right. Certificates are made by the test with openssl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

struct TlsBroker {
    child: Child,
    tls_port: u16,
    plain_port: u16,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto with a TLS listener that needs user `inspectd` / `s3cret`, and a plain
/// anonymous listener for the test's own subscriber.
fn tls_broker(dir: &Path) -> TlsBroker {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let passwd = dir.join("passwd");
    run(Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["inspectd", "s3cret"]));
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ports = free_ports(2);
    let (tls_port, plain_port) = (ports[0], ports[1]);
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             allow_anonymous false\npassword_file {d}/passwd\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            tls_port
        ))
        .is_ok()),
        "TLS mosquitto did not start:\n{}",
        std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
    );
    TlsBroker {
        child,
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
