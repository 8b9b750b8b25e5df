//! Connections to Postgres: `DATABASE_URL` with its `sslmode` and `sslrootcert`, TLS through
//! rustls, single connections (`connect`) and the pool (`pool`).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use postgres::config::SslMode;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use r2d2_postgres::PostgresConnectionManager;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub type Pool = r2d2::Pool<PostgresConnectionManager<MakeTls>>;
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<MakeTls>>;

/// `sslmode`, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it (unverified, as libpq does), plain otherwise. The default.
    Prefer,
    /// TLS always; the certificate is not checked (unless `sslrootcert` is given, as in libpq).
    Require,
    /// TLS with a certificate that chains to `sslrootcert` (else the bundled web roots).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Option<TlsMode> {
        Some(match value {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// A parsed `DATABASE_URL`: where to connect, and how to secure the connection.
#[derive(Clone)]
pub struct Database {
    pub pg: postgres::Config,
    pub tls_mode: TlsMode,
    tls: MakeTls,
}

// The postgres config holds the password: never shown.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("hosts", &self.pg.get_hosts())
            .field("dbname", &self.pg.get_dbname())
            .field("tls_mode", &self.tls_mode)
            .finish()
    }
}

/// Parses `DATABASE_URL` (a URL or libpq's `key=value` form); the error never repeats the
/// URL, which may hold a password. `sslrootcert` is read here, so a missing or unreadable
/// file is a configuration error at startup.
pub fn parse_url(url: &str) -> Result<Database, String> {
    let (rest, sslmode, sslrootcert) = take_tls_options(url);
    let mut pg = postgres::Config::from_str(&rest)
        .map_err(|e| format!("DATABASE_URL is not a valid Postgres URL: {e}"))?;
    pg.application_name("switcher-api");
    pg.connect_timeout(Duration::from_secs(5));
    // A dead peer without a FIN (a partition) is noticed by the listening connection.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
    // No control-plane statement may hold a connection (and its worker) for long.
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={STATEMENT_TIMEOUT_MS}"),
        _ => format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"),
    };
    pg.options(&options);
    let tls_mode = match sslmode.as_deref() {
        None => TlsMode::Prefer,
        Some(v) => TlsMode::parse(v).ok_or_else(|| {
            format!(
                "DATABASE_URL has sslmode={v:?}; use disable, prefer, require, verify-ca or \
                 verify-full"
            )
        })?,
    };
    pg.ssl_mode(match tls_mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    let roots = match sslrootcert.as_deref() {
        // libpq's `system`: the trusted roots we have, the bundled ones.
        None | Some("system") => None,
        Some(path) => Some(read_roots(path)?),
    };
    let verify = match tls_mode {
        TlsMode::Disable | TlsMode::Prefer => Verify::Nothing,
        // libpq: with a root certificate given, `require` checks the chain like verify-ca.
        TlsMode::Require if roots.is_some() => Verify::Chain,
        TlsMode::Require => Verify::Nothing,
        TlsMode::VerifyCa => Verify::Chain,
        TlsMode::VerifyFull => Verify::ChainAndName,
    };
    let roots = roots.unwrap_or_else(|| RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    Ok(Database {
        pg,
        tls_mode,
        tls: MakeTls::new(verify, roots),
    })
}

/// The bound on every statement of the service's own connections.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// Removes `sslmode` and `sslrootcert` from the URL (the postgres crate knows only some
/// sslmodes and no sslrootcert) and returns them decoded.
fn take_tls_options(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(crate::http::percent_decode(v).into_owned()),
                Some(("sslrootcert", v)) => {
                    root = Some(crate::http::percent_decode(v).into_owned())
                }
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, mode, root);
    }
    // key=value form; quoted values are left to the postgres crate (and so are refused for
    // these two keys, which never need quotes).
    let mut kept = Vec::new();
    for token in url.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(v.to_string()),
            _ => kept.push(token),
        }
    }
    (kept.join(" "), mode, root)
}

fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let problem = |what: String| format!("DATABASE_URL sslrootcert {path:?} {what}");
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| problem(format!("is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| problem(format!("holds an unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(problem("holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// One connection of its own, with the configured TLS (the state listener's, the journal
/// writer's, migrations').
pub fn connect(db: &Database) -> Result<postgres::Client, postgres::Error> {
    db.pg.connect(db.tls.clone())
}

/// A pool that connects lazily: the service starts (and answers `/healthz` with 503) even
/// while the database is away, and recovers by itself when it returns.
pub fn pool(db: Database, size: u32) -> Pool {
    let manager = PostgresConnectionManager::new(db.pg, db.tls);
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // No round trip to test a connection before each use: a broken one fails its query,
        // is discarded by r2d2 (`has_broken`) and the request gets a 503.
        .test_on_check_out(false)
        // A request waits this long for a connection before it gets a 503.
        .connection_timeout(Duration::from_secs(3))
        .error_handler(Box::new(QuietErrors))
        .build_unchecked(manager)
}

/// When a connection failed because of TLS in a way retrying will not mend (a certificate
/// refused, a server without TLS under sslmode=require or stricter), the reason.
pub fn tls_refusal(e: &postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        if c.to_string() == "server does not support TLS" {
            return Some("the server does not support TLS".into());
        }
        cause = c.source();
    }
    None
}

/// r2d2 logs connection failures through the `log` crate, which we do not install; they are
/// reported where a request fails instead.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, error: postgres::Error) {
        crate::debug!("database connection failed: {error}");
    }
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// TLS for the postgres client through rustls (the `MakeTlsConnect` the crate asks for).
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<ClientConfig>,
}

impl MakeTls {
    fn new(verify: Verify, roots: RootCertStore) -> MakeTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let config = match verify {
            Verify::ChainAndName => builder.with_root_certificates(roots),
            Verify::Chain | Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    roots: (verify == Verify::Chain).then_some(roots),
                    provider,
                })),
        }
        .with_no_client_auth();
        MakeTls {
            config: Arc::new(config),
        }
    }
}

/// The verifier of `require` and `prefer` (nothing) and `verify-ca` (the chain, not the
/// name). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS connection to Postgres. Without channel binding: SCRAM then runs without it, as with
/// libpq's default `channel_binding=prefer` against a server that does not offer it.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Formats a timestamp column as RFC 3339 UTC with microseconds, in SQL.
#[macro_export]
macro_rules! iso {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (rest, mode, root) = take_tls_options(
            "postgres://u:secret@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:secret@db:5432/x?application_name=a");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = take_tls_options("host=db user=u sslmode=require dbname=x");
        assert_eq!(rest, "host=db user=u dbname=x");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn every_sslmode_parses_and_prefer_is_the_default() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let db = parse_url(&format!("postgres://u@h/d?sslmode={mode}")).unwrap();
            assert_eq!(db.tls_mode.as_str(), mode);
        }
        let db = parse_url("postgres://u@h/d").unwrap();
        assert_eq!(db.tls_mode, TlsMode::Prefer);
    }

    #[test]
    fn configuration_errors_never_show_the_password() {
        for url in [
            "postgres://u:hunter2@h/d?sslmode=sometimes",
            "postgres://u:hunter2@h:notaport/d",
            "postgres://u:hunter2@h/d?sslrootcert=/nonexistent/ca.pem",
        ] {
            let e = parse_url(url).unwrap_err();
            assert!(e.starts_with("DATABASE_URL"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse_url("postgres://u@h/d?sslmode=sometimes").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("switcher-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let url = format!(
            "postgres://u@h/d?sslmode=verify-ca&sslrootcert={}",
            path.display()
        );
        let e = parse_url(&url).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
