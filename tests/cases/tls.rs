//! TLS to the source: `require`, `verify-full` against a CA file, and the
//! failures a user must see clearly (plaintext refused, unknown CA).

use std::process::Command;

use crate::harness::*;

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate it signed for `localhost` (not 127.0.0.1), and an unrelated CA.
pub(crate) fn make_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "other"] {
        openssl(
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "2",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
            dir,
        );
    }
    openssl(
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
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
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ],
        dir,
    );
    // The server's key must belong to the server's user and be private.
    let _ = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir).status();
    let _ = Command::new("chmod").arg("600").arg(dir.join("server.key")).status();
    let _ = Command::new("chmod").arg("755").arg(dir).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes() {
    let certs = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
    make_certs(&certs);
    let crt = format!("'{}'", certs.join("server.crt").display());
    let key = format!("'{}'", certs.join("server.key").display());
    let env = Env::with_settings("tls", &[("ssl", "on"), ("ssl_cert_file", &crt), ("ssl_key_file", &key)]);
    let c = env.client().await;
    c.batch_execute(
        "CREATE ROLE tlsuser LOGIN SUPERUSER REPLICATION;
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    // tlsuser may only connect over TLS.
    env.pg
        .prepend_hba("hostnossl all tlsuser 127.0.0.1/32 reject\nhostnossl replication tlsuser 127.0.0.1/32 reject")
        .unwrap();
    let pipeline = |name: &str, host: &str, tls: &str| {
        let url = format!("postgres://tlsuser@{host}:{}/postgres", env.pg.port);
        let yaml = format!(
            "version: 1\nname: {name}\nsource:\n  type: postgres\n  url: {url}\n  tls:\n{tls}\ntables:\n  include: [\"public.t\"]\nsink:\n{}checkpoint:\n  path: {}\n",
            env.files_sink(name, "jsonl"),
            env.dir.join(format!("state-{name}")).display()
        );
        let p = env.dir.join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    };

    let plain = pipeline("plain", "127.0.0.1", "    mode: disable");
    let r = sluice(&["run", plain.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no encryption") || r.stderr.contains("rejects connection"), "{}", r.stderr);

    let unknown_ca = pipeline(
        "unknownca",
        "localhost",
        &format!("    mode: verify-full\n    ca_file: {}", certs.join("other.crt").display()),
    );
    let r = sluice(&["run", unknown_ca.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("certificate") || r.stderr.contains("Certificate"), "{}", r.stderr);

    let missing_ca = pipeline("missingca", "localhost", "    mode: verify-full\n    ca_file: /nonexistent/ca.pem");
    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1.
    let wrong_name = pipeline(
        "wrongname",
        "127.0.0.1",
        &format!("    mode: verify-full\n    ca_file: {}", certs.join("ca.crt").display()),
    );
    let r = sluice(&["run", wrong_name.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("NotValidForName") || r.stderr.contains("not valid for name"), "{}", r.stderr);
    let r = sluice(&["run", missing_ca.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("source.tls.ca_file"), "{}", r.stderr);

    for (name, host, tls) in [
        ("require", "127.0.0.1", "    mode: require".to_string()),
        ("verifyfull", "localhost", format!("    mode: verify-full\n    ca_file: {}", certs.join("ca.crt").display())),
        // verify-ca checks the chain only, so the address not in the certificate is fine.
        ("verifyca", "127.0.0.1", format!("    mode: verify-ca\n    ca_file: {}", certs.join("ca.crt").display())),
    ] {
        let p = pipeline(name, host, &tls);
        let r = sluice(&["check", p.to_str().unwrap()]).await;
        assert_eq!(r.code, 0, "{name}: {}\n{}", r.stdout, r.stderr);
        catch_up(&p).await;
        c.batch_execute(&format!("INSERT INTO t VALUES ({}, '{name}')", 1000 + name.len())).await.unwrap();
        catch_up(&p).await;
        let out = read_jsonl(&env.out(name));
        let got = replay(&out["public.t"], &["id"]).unwrap();
        let want = source_rows(&c, "SELECT to_json(x) FROM t x", &["id"]).await;
        assert_same(name, &got, &want);
        let _ = sluice(&["teardown", p.to_str().unwrap(), "--yes"]).await;
    }
    let _ = std::fs::remove_dir_all(certs);
}
