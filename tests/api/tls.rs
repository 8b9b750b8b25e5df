//! TLS to Postgres for real: `sslmode=require` against the shared server (which has TLS on
//! with Debian's snakeoil certificate), and `verify-ca`/`verify-full` against a throwaway
//! cluster of our own whose certificate is signed by a CA made here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{run_binary, TestApp, TestDb, ADMIN_KEY, AGENT_KEY};

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[test]
fn sslmode_require_connects_the_pool_over_tls() {
    let db = TestDb::create();
    let url = with_query(&db.url, "sslmode=require");
    let app = TestApp::spawn_on(db, &[("DATABASE_URL", &url)]);
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let ssl: Vec<bool> = app
        .db
        .client()
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND a.application_name = 'switcher-api'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!ssl.is_empty(), "the service holds no connection");
    assert!(ssl.iter().all(|&s| s), "a connection without TLS: {ssl:?}");
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` as the `postgres` user (initdb and postgres refuse to run as root).
fn as_postgres(args: &[&str], dir: &Path) {
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let mut all = vec!["-u", "postgres", "--"];
        all.extend_from_slice(args);
        run("runuser", &all, dir);
    } else {
        run(args[0], &args[1..], dir);
    }
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres server binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// A CA, and a server certificate for `localhost` it signed.
fn make_certificates(dir: &Path) {
    let days = ["-days", "2"];
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=switcher test {ca}");
        let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
        let mut args = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes"];
        args.extend(["-keyout", &key, "-out", &crt, "-subj", &subject]);
        args.extend(days);
        run("openssl", &args, dir);
    }
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        dir,
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
            "-days",
            "2",
        ],
        dir,
    );
}

/// A Postgres cluster of its own on a free port, with TLS on; stopped and removed on drop,
/// pass or fail.
struct Cluster {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "switcher-tls-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            data: dir.join("data"),
            dir,
            port,
            bin: postgres_bin(),
        };
        make_certificates(&cluster.dir);
        if unsafe { libc::geteuid() } == 0 {
            run("chown", &["-R", "postgres:postgres", "."], &cluster.dir);
        }
        run("chmod", &["0600", "server.key"], &cluster.dir);
        let tool = |name: &str| cluster.bin.join(name).display().to_string();
        let data = cluster.data.display().to_string();
        as_postgres(
            &[
                &tool("initdb"),
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            &cluster.dir,
        );
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            dir = cluster.dir.display()
        );
        let log = cluster.dir.join("log").display().to_string();
        as_postgres(
            &[
                &tool("pg_ctl"),
                "-D",
                &data,
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "120",
                "start",
            ],
            &cluster.dir,
        );
        cluster
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:pw-never-shown@{host}:{}/postgres?{query}",
            self.port
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let data = self.data.display().to_string();
        let mut command = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &pg_ctl]);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `switcher-api migrate` against `url`.
fn migrate(url: &str) -> (Option<i32>, String) {
    let exit = run_binary(
        &["migrate"],
        &[
            ("DATABASE_URL", url),
            ("ROUTER_ADMIN_KEY", ADMIN_KEY),
            ("ROUTER_AGENT_KEY", AGENT_KEY),
        ],
        Duration::from_secs(120),
    );
    (exit.code, format!("{}{}", exit.stdout, exit.stderr))
}

fn assert_refused(url: &str, reason: &str) {
    let (code, output) = migrate(url);
    assert!(
        code.is_some_and(|c| c != 0),
        "{url}: exit {code:?}: {output}"
    );
    eprintln!("refused as expected: {output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {output}");
    assert!(
        output.contains("TLS") && output.contains(reason),
        "{url}: {output}"
    );
    assert!(!output.contains("pw-never-shown"), "{output}");
}

#[test]
fn verify_full_and_verify_ca_check_the_servers_certificate() {
    let cluster = Cluster::start();
    let ca = format!("sslrootcert={}", cluster.file("ca.crt"));
    let other = format!("sslrootcert={}", cluster.file("other-ca.crt"));

    // The right CA and the name on the certificate.
    let (code, output) = migrate(&cluster.url("localhost", &format!("sslmode=verify-full&{ca}")));
    assert_eq!(code, Some(0), "{output}");
    // verify-ca checks the chain but not the name.
    let (code, output) = migrate(&cluster.url("127.0.0.1", &format!("sslmode=verify-ca&{ca}")));
    assert_eq!(code, Some(0), "{output}");
    // require checks nothing.
    let (code, output) = migrate(&cluster.url("127.0.0.1", "sslmode=require"));
    assert_eq!(code, Some(0), "{output}");

    // A certificate from another CA.
    assert_refused(
        &cluster.url("localhost", &format!("sslmode=verify-full&{other}")),
        "UnknownIssuer",
    );
    assert_refused(
        &cluster.url("localhost", &format!("sslmode=verify-ca&{other}")),
        "UnknownIssuer",
    );
    // Not among the bundled web roots either.
    assert_refused(
        &cluster.url("localhost", "sslmode=verify-full"),
        "UnknownIssuer",
    );
    // The right CA, but a host name the certificate does not carry.
    assert_refused(
        &cluster.url("127.0.0.1", &format!("sslmode=verify-full&{ca}")),
        "not valid for name",
    );
}
