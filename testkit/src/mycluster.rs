//! Throwaway MariaDB servers from the installed binaries: own data
//! directory, own free port, row-based binlog settings. Used by the
//! integration tests and the benchmarks. Dropping a server stops it and
//! removes its directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MyCluster {
    pub dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

fn find(tool: &[&str]) -> Result<PathBuf, String> {
    for t in tool {
        for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin"] {
            let p = Path::new(d).join(t);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no MariaDB server binaries found ({} in /usr/sbin, /usr/bin); install them, e.g. `apt-get install mariadb-server`",
        tool.join("/")
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(13306)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl MyCluster {
    /// mariadb-install-db + start with `--log-bin`, row format, full images
    /// and metadata, server id 1, GTIDs (MariaDB always has them), plus `extra`
    /// server options (`--name=value`).
    pub fn start(extra: &[&str]) -> Result<MyCluster, String> {
        let install = find(&["mariadb-install-db", "mysql_install_db"])?;
        let dir = std::env::temp_dir().join(format!(
            "sluice-my-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A private tmpdir: concurrent bootstraps sharing /tmp collide on
        // their temporary table file names.
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if is_root() {
            let st = Command::new("chown").args(["-R", "mysql:mysql"]).arg(&dir).status().map_err(|e| e.to_string())?;
            if !st.success() {
                return Err("cannot chown the data directory to user mysql (does the user exist?)".into());
            }
        }
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .env("TMPDIR", dir.join("tmp"))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdin(Stdio::null());
        if is_root() {
            cmd.arg("--user=mysql");
        }
        let out = cmd.output().map_err(|e| format!("running mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let mut c = MyCluster { dir, port: 0, extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        let mut last = String::new();
        for _ in 0..5 {
            c.port = free_port();
            match c.launch() {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn launch(&mut self) -> Result<(), String> {
        let server = find(&["mariadbd", "mysqld"])?;
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", self.dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", self.dir.join("server.log").display()))
            .arg(format!("--log-bin={}", self.dir.join("data").join("binlog").display()))
            .args([
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--max-connections=200",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=mysql");
        }
        let child = cmd.spawn().map_err(|e| format!("starting mariadbd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(ch) = self.child.as_mut() {
                if let Ok(Some(st)) = ch.try_wait() {
                    self.child = None;
                    let tail = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    return Err(format!("mariadbd exited ({st}):\n{tail}"));
                }
            }
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("mariadbd did not accept connections within 60 s".into())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// `mysql://root@127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Run SQL through the `mariadb` client (batch mode, raw tab-separated
    /// output without headers, NULL as `NULL`).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let client = find(&["mariadb", "mysql"])?;
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--raw", "--skip-column-names", "--default-character-set=utf8mb4", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("mariadb: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Stop (SIGKILL, like a crash, when `crash`) and start again on the same port.
    pub fn restart(&mut self, crash: bool) -> Result<(), String> {
        self.halt(crash);
        self.launch()
    }

    /// Stop (SIGKILL when `crash`), stay down for `pause`, start again on the same port.
    pub fn restart_after(&mut self, crash: bool, pause: Duration) -> Result<(), String> {
        self.halt(crash);
        std::thread::sleep(pause);
        self.launch()
    }

    /// Freeze the server (SIGSTOP) for `pause`, then let it go on (SIGCONT):
    /// its connections stay open but say nothing, not even heartbeats.
    pub fn freeze(&self, pause: Duration) -> Result<(), String> {
        let pid = self.child.as_ref().ok_or("mariadbd is not running")?.id() as i32;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(format!("SIGSTOP to mariadbd: {}", std::io::Error::last_os_error()));
        }
        std::thread::sleep(pause);
        // SAFETY: as above.
        if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
            return Err(format!("SIGCONT to mariadbd: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn halt(&mut self, crash: bool) {
        if let Some(mut ch) = self.child.take() {
            if !crash {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(ch.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = ch.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    pub fn stop(&mut self) {
        self.halt(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for MyCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
