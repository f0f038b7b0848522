//! TLS to a MySQL/MariaDB source: `require`, `verify-ca`, `verify-full`
//! against a CA file, and the failures a user must see clearly.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tls_modes() {
    let certs = std::env::temp_dir().join(format!("sluice-mytls-{}", std::process::id()));
    super::tls::make_certs(&certs);
    let _ = std::process::Command::new("chown").arg("-R").arg("mysql:mysql").arg(&certs).status();
    let env = MyEnv::with_args(
        "mytls",
        &[
            &format!("--ssl-ca={}", certs.join("ca.crt").display()),
            &format!("--ssl-cert={}", certs.join("server.crt").display()),
            &format!("--ssl-key={}", certs.join("server.key").display()),
        ],
    );
    env.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v TEXT); INSERT INTO shop.t VALUES (1, 'a'), (2, 'b'); \
         CREATE USER 'tlsuser'@'%' REQUIRE SSL; \
         GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR, REPLICATION CLIENT ON *.* TO 'tlsuser'@'%';",
    );
    let pipeline = |name: &str, host: &str, tls: &str| {
        let url = format!("mysql://tlsuser@{host}:{}", env.my.port);
        let yaml = format!(
            "version: 1\nname: {name}\nsource:\n  type: mysql\n  url: {url}\n  tls:\n{tls}\ntables:\n  include: [\"shop.*\"]\nsink:\n{}checkpoint:\n  path: {}\n",
            env.files_sink(name, "jsonl"),
            env.dir.join(format!("state-{name}")).display()
        );
        let p = env.dir.join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    };
    // The user must use TLS: plain text is refused by the server.
    let plain = pipeline("plain", "127.0.0.1", "    mode: disable");
    let r = sluice(&["run", plain.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot log in"), "{}", r.stderr);
    // An unknown CA and a name the certificate does not carry.
    let unknown = pipeline(
        "unknownca",
        "localhost",
        &format!("    mode: verify-full\n    ca_file: {}", certs.join("other.crt").display()),
    );
    let r = sluice(&["run", unknown.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("certificate"), "{}", r.stderr);
    let wrong_name = pipeline(
        "wrongname",
        "127.0.0.1",
        &format!("    mode: verify-full\n    ca_file: {}", certs.join("ca.crt").display()),
    );
    let r = sluice(&["run", wrong_name.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("name"), "{}", r.stderr);
    let missing = pipeline("missingca", "localhost", "    mode: verify-full\n    ca_file: /nonexistent/ca.pem");
    let r = sluice(&["run", missing.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("source.tls.ca_file"), "{}", r.stderr);

    // verify-ca cannot be honoured by the MySQL client library: refused clearly.
    let ca_only = pipeline(
        "verifyca",
        "127.0.0.1",
        &format!("    mode: verify-ca\n    ca_file: {}", certs.join("ca.crt").display()),
    );
    let r = sluice(&["check", ca_only.to_str().unwrap()]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("verify-ca is not supported"), "{}", r.stderr);

    let mut n = 10;
    for (name, host, tls) in [
        ("require", "127.0.0.1", "    mode: require".to_string()),
        ("prefer", "127.0.0.1", "    mode: prefer".to_string()),
        ("verifyfull", "localhost", format!("    mode: verify-full\n    ca_file: {}", certs.join("ca.crt").display())),
    ] {
        let p = pipeline(name, host, &tls);
        let r = sluice(&["check", p.to_str().unwrap()]).await;
        assert_eq!(r.code, 0, "{name}: {}\n{}", r.stdout, r.stderr);
        catch_up(&p).await;
        n += 1;
        env.sql(&format!("INSERT INTO shop.t VALUES ({n}, '{name}')"));
        catch_up(&p).await;
        let out = read_jsonl(&env.out(name));
        assert_same(
            name,
            &replay(&out["shop.t"], &["id"]).unwrap(),
            &env.rows("SELECT JSON_OBJECT('id', id, 'v', v) FROM shop.t", &["id"]),
        );
    }
    let _ = std::fs::remove_dir_all(certs);
}
