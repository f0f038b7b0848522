//! Throwaway Postgres clusters from the installed server binaries: own data
//! directory, own free port, logical replication settings. Used by
//! `sluice demo`, the integration tests and the benchmarks. Dropping a
//! cluster stops it and removes its directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    pub bindir: PathBuf,
    as_postgres: bool,
    stopped: bool,
}

/// Find the server binaries: `$SLUICE_PG_BINDIR`, `pg_config --bindir`, then
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("SLUICE_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    }
    for c in candidates {
        if c.join("initdb").exists() && c.join("pg_ctl").exists() {
            return Ok(c);
        }
    }
    Err("no PostgreSQL server binaries found (looked at $SLUICE_PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin); \
         install them, e.g. `apt-get install postgresql`"
        .into())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(15432)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// initdb + start with logical replication settings and `extra` settings.
    pub fn start(extra: &[(&str, &str)]) -> Result<PgCluster, String> {
        let bindir = find_bindir()?;
        let as_postgres = is_root();
        let base = std::env::temp_dir();
        let dir = base.join(format!(
            "sluice-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut c = PgCluster { dir, port: 0, bindir, as_postgres, stopped: false };
        if as_postgres {
            let st = Command::new("chown").arg("postgres:postgres").arg(&c.dir).status().map_err(|e| e.to_string())?;
            if !st.success() {
                return Err("cannot chown the data directory to user postgres (does the user exist?)".into());
            }
        }
        let data = c.data_dir();
        c.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])?;
        let mut conf = String::from(
            "\nlisten_addresses = '127.0.0.1'\nwal_level = logical\nmax_wal_senders = 20\nmax_replication_slots = 20\n\
             wal_sender_timeout = '20s'\nfsync = off\nfull_page_writes = off\nshared_buffers = '128MB'\n\
             max_connections = 100\nlogging_collector = off\nlog_min_messages = warning\n",
        );
        conf.push_str(&format!("unix_socket_directories = '{}'\n", c.dir.display()));
        for (k, v) in extra {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = c.dir.join("data").join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).map_err(|e| e.to_string())?;
        existing.push_str(&conf);
        // Retry on a port taken between our probe and the server's bind.
        for attempt in 0..5 {
            c.port = free_port();
            let body = format!("{existing}port = {}\n", c.port);
            std::fs::write(&conf_path, body).map_err(|e| e.to_string())?;
            let log = c.dir.join("server.log").display().to_string();
            match c.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"]) {
                Ok(()) => return Ok(c),
                Err(e) if attempt < 4 => {
                    let _ = e;
                    continue;
                }
                Err(e) => {
                    let tail = std::fs::read_to_string(c.dir.join("server.log")).unwrap_or_default();
                    return Err(format!("{e}\n{tail}"));
                }
            }
        }
        unreachable!()
    }

    pub fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out =
            self.command(tool).args(args).stdin(Stdio::null()).output().map_err(|e| format!("running {tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Append lines to pg_hba.conf (before the defaults) and reload.
    pub fn prepend_hba(&self, lines: &str) -> Result<(), String> {
        let p = self.dir.join("data").join("pg_hba.conf");
        let old = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
        std::fs::write(&p, format!("{lines}\n{old}")).map_err(|e| e.to_string())?;
        self.run("pg_ctl", &["-D", &self.data_dir(), "reload"])
    }

    /// Stop fast (like a crash) and start again on the same port.
    pub fn restart(&self, mode: &str) -> Result<(), String> {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])?;
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"])
    }

    /// Stop (`mode`: fast, immediate), stay down for `pause`, start again on the same port.
    pub fn restart_after(&self, mode: &str, pause: std::time::Duration) -> Result<(), String> {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])?;
        std::thread::sleep(pause);
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"])
    }

    pub fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = self.run("pg_ctl", &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
