//! How a segment reaches the broker.

use std::{fmt, path::PathBuf, time::Duration};

use async_nats::{Client, ConnectErrorKind, ConnectOptions};

use super::NatsError;

/// How to connect to a NATS server: its address and the broker's real
/// options (credentials, TLS, a client name, a timeout).
///
/// Built with [`new`](Self::new) and the builder methods, then
/// [`connect`](Self::connect). Cloning is cheap enough to give each source
/// and sink its own. `Debug` never shows a secret: the token, the password
/// (also one written in the URL as `nats://user:pass@host`) and the
/// credentials (only the file's path) are left out.
///
/// Options mirror the [NATS client
/// docs](https://docs.nats.io/using-nats/developer/connecting): one kind of
/// credential at a time (the last one set wins), TLS when the URL says
/// `tls://`, when [`require_tls`](Self::require_tls) is set, or when the
/// server asks for it.
///
/// ```
/// # #[cfg(feature = "nats")] {
/// use std::time::Duration;
/// use genflow::nats::Connect;
///
/// let connect = Connect::new("nats://127.0.0.1:4222")
///     .user_password("ingest", "hunter2")
///     .name("logs-ingest")
///     .timeout(Duration::from_secs(2));
/// let shown = format!("{connect:?}");
/// assert!(shown.contains("ingest") && !shown.contains("hunter2"));
/// # }
/// ```
#[derive(Clone)]
pub struct Connect {
    /// One address, or several separated by commas.
    servers: String,
    auth: Auth,
    root_certificates: Option<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    name: Option<String>,
    timeout: Duration,
}

/// The one kind of credential a connection presents.
#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword { user: String, password: String },
    CredentialsFile(PathBuf),
}

impl Connect {
    /// The connection to `servers`: a URL such as `nats://127.0.0.1:4222`
    /// or `tls://broker:4222`, or several separated by commas (tried in
    /// random order, as the NATS clients do). No credentials, no client
    /// certificate, a 5 s timeout.
    pub fn new(servers: impl Into<String>) -> Self {
        Connect {
            servers: servers.into(),
            auth: Auth::None,
            root_certificates: None,
            client_certificate: None,
            require_tls: false,
            name: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Authenticates with a token (`nats-server --auth <token>`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticates with a user name and a password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword { user: user.into(), password: password.into() };
        self
    }

    /// Authenticates with a `.creds` file (a user JWT and its nkey seed, as
    /// `nsc` writes them), read when [`connect`](Self::connect) runs.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Trusts the CA certificates in this PEM file for the server's TLS
    /// certificate (besides the system's roots), and requires TLS.
    pub fn root_certificates(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root_certificates = Some(pem.into());
        self.require_tls = true;
        self
    }

    /// Presents this client certificate and key (PEM files) to a server that
    /// verifies clients (`--tlsverify`), and requires TLS.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self.require_tls = true;
        self
    }

    /// Refuses to connect without TLS when `required` (the default is to use
    /// TLS when the URL or the server asks for it).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// The client name the server shows for this connection (in its
    /// monitoring and logs).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long one attempt to connect may take (5 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, once: the first failure is returned, not retried. Once
    /// connected, the client reconnects by itself when the connection
    /// drops (async-nats' default).
    ///
    /// # Errors
    ///
    /// - [`NatsError::Credentials`] if the credentials file cannot be read
    ///   or is not a credentials file.
    /// - [`NatsError::Connect`] if the server is not reachable within the
    ///   timeout, the TLS handshake fails, or the server refuses the
    ///   credentials (then its `auth` is `true` and the message says so).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt; nothing is left running.
    pub async fn connect(&self) -> Result<Client, NatsError> {
        let mut options = match &self.auth {
            Auth::None => ConnectOptions::new(),
            Auth::Token(token) => ConnectOptions::with_token(token.clone()),
            Auth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Auth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials { path: path.clone(), source })?,
        };
        if let Some(pem) = &self.root_certificates {
            options = options.add_root_certificates(pem.clone());
        }
        if let Some((cert, key)) = &self.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        options = options.require_tls(self.require_tls).connection_timeout(self.timeout);
        options.connect(self.servers.as_str()).await.map_err(|source| NatsError::Connect {
            server: without_user_info(&self.servers),
            auth: matches!(source.kind(), ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication),
            source,
        })
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::Token(_) => "token (hidden)".to_string(),
            Auth::UserPassword { user, .. } => format!("user {user:?}, password (hidden)"),
            Auth::CredentialsFile(path) => format!("credentials file {}", path.display()),
        };
        f.debug_struct("Connect")
            .field("servers", &without_user_info(&self.servers))
            .field("auth", &auth)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate.as_ref().map(|(cert, _)| cert))
            .field("require_tls", &self.require_tls)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `servers` with the user information (`user:password@`) of each address
/// left out.
fn without_user_info(servers: &str) -> String {
    let shown: Vec<String> = servers
        .split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = server.split_once("://").map_or(("", server), |(s, r)| (s, r));
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            if scheme.is_empty() { host.to_string() } else { format!("{scheme}://{host}") }
        })
        .collect();
    shown.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_left_out_of_addresses() {
        assert_eq!(without_user_info("nats://a:secret@h1:4222, tls://tok@h2"), "nats://h1:4222,tls://h2");
        assert_eq!(without_user_info("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[test]
    fn debug_shows_no_secret() {
        for connect in [
            Connect::new("nats://u:pw-in-url@127.0.0.1:4222").token("tok-secret"),
            Connect::new("nats://127.0.0.1:4222").user_password("ingest", "pw-secret"),
        ] {
            let shown = format!("{connect:?}");
            for secret in ["pw-in-url", "tok-secret", "pw-secret"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("127.0.0.1:4222"), "{shown}");
        }
    }
}
