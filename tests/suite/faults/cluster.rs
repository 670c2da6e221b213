//! The harness's own PostgreSQL cluster: initdb in a temporary folder,
//! its own port, killed and started again by the harness.

use super::*;

/// A PostgreSQL cluster of the harness's own, killed and restarted at will.
pub(super) struct Cluster {
    pub(super) binaries: PathBuf,
    pub(super) directory: PathBuf,
    pub(super) port: u16,
    /// The postgres user's ids when the harness runs as root (PostgreSQL
    /// refuses to run as root).
    pub(super) user: Option<(u32, u32)>,
    pub(super) postmaster: Option<Child>,
}

impl Cluster {
    /// Initialises a cluster in a temporary folder; `None` (loudly) where
    /// PostgreSQL's programs are not installed, outside CI.
    pub(super) async fn create() -> Option<Self> {
        let binaries = match Command::new("pg_config").arg("--bindir").output().await {
            Ok(output) if output.status.success() => PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()),
            _ => {
                assert!(std::env::var("CI").is_err(), "the fault harness needs PostgreSQL's programs (pg_config)");
                eprintln!("!!! pg_config not found: the fault harness did NOT run");
                return None;
            }
        };
        let directory = std::env::temp_dir().join(format!("reservoir-faults-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).unwrap();
        let user = if is_root() { Some(postgres_ids().await) } else { None };
        if let Some((uid, gid)) = user {
            let owned = Command::new("chown").arg(format!("{uid}:{gid}")).arg(&directory).status().await.unwrap();
            assert!(owned.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut initdb = Command::new(binaries.join("initdb"));
        initdb.args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"]).arg(directory.join("data"));
        let initialised = as_user(&mut initdb, user).output().await.unwrap();
        assert!(initialised.status.success(), "initdb: {}", String::from_utf8_lossy(&initialised.stderr));
        let mut cluster = Self { binaries, directory, port, user, postmaster: None };
        cluster.start().await;
        Some(cluster)
    }

    pub(super) fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (recovering from a crash if it was killed) and waits
    /// until it takes connections.
    pub(super) async fn start(&mut self) {
        let mut postgres = Command::new(self.binaries.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.directory.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.directory.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: a kill takes the backends with it, as a
            // crash of the machine would.
            .process_group(0)
            .kill_on_drop(true);
        self.postmaster = Some(as_user(&mut postgres, self.user).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(self.address()).await.is_err()
            || sea_orm::Database::connect(self.url("postgres")).await.is_err()
        {
            assert!(Instant::now() < deadline, "PostgreSQL did not start within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the server and every backend at once.
    pub(super) async fn kill(&mut self) {
        let mut postmaster = self.postmaster.take().expect("a running server");
        let group = postmaster.id().expect("a pid").to_string();
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status().await;
        let _ = postmaster.wait().await;
    }

    pub(super) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub(super) async fn create_database(&self, name: &str) {
        use sea_orm::ConnectionTrait;
        let connection = sea_orm::Database::connect(self.url("postgres")).await.unwrap();
        connection.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
        connection.close().await.unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(postmaster) = &self.postmaster
            && let Some(group) = postmaster.id()
        {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

pub(super) fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

pub(super) async fn postgres_ids() -> (u32, u32) {
    let id = |flag: &'static str| async move {
        let output = Command::new("id").args([flag, "postgres"]).output().await.unwrap();
        assert!(output.status.success(), "running as root needs a postgres user for PostgreSQL");
        String::from_utf8(output.stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    (id("-u").await, id("-g").await)
}

pub(super) fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}
