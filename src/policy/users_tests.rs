use super::*;

fn bcrypt4(pw: &str) -> String {
    hash_password(&Secret::new(pw), HashAlgorithm::Bcrypt { cost: 4 }).expect("hash")
}

/// A cheap argon2id hash (the defaults take 19 MiB; tests need not).
fn argon2_small(pw: &str) -> String {
    let params = argon2::Params::new(64, 1, 1, None).expect("params");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pw.as_bytes())
        .expect("hash")
        .to_string()
}

fn users(text: &str) -> Users {
    Users::parse(text, CacheLimits::default()).expect("valid users file")
}

#[test]
fn parses_bcrypt_and_argon2_with_groups() {
    let text = format!(
        "# comment\n\nalice:{}:staff,admins\nbob:{}\n",
        bcrypt4("a-secret"),
        argon2_small("b-secret")
    );
    let u = users(&text);
    assert_eq!(u.len(), 2);
    let alice = u
        .verify("alice", &Secret::new("a-secret"))
        .expect("alice verifies");
    assert_eq!(alice.groups, ["staff", "admins"]);
    assert_eq!(
        u.verify("bob", &Secret::new("b-secret")).map(|i| i.groups),
        Some(vec![])
    );
    assert_eq!(u.verify("alice", &Secret::new("b-secret")), None);
    assert_eq!(u.verify("bob", &Secret::new("")), None);
    assert_eq!(u.verify("carol", &Secret::new("a-secret")), None);
    assert_eq!(u.identity("bob").map(|i| i.name), Some("bob".into()));
}

#[test]
fn htpasswd_2y_hashes_verify() {
    // `htpasswd -B` writes $2y$; the same hash with $2b$ is what the crate writes.
    let h = bcrypt4("pw").replacen("$2b$", "$2y$", 1);
    let u = users(&format!("alice:{h}\n"));
    assert!(u.verify("alice", &Secret::new("pw")).is_some());
}

#[test]
fn every_bad_line_is_reported_with_its_number() {
    let good = bcrypt4("x");
    let huge =
        "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
    let text = format!(
        "alice:{good}\nnohash\nbob:plaintext\ncarol:{good}:staff,,x\nalice:{good}\n\
         dave:$2b$04$short\nerin:{huge}\n: {good}\nmallory:$1$md5$hash\n"
    );
    let errs = Users::parse(&text, CacheLimits::default()).expect_err("bad file");
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9], "{errs:?}");
    assert!(errs[3].message.contains("twice"));
    assert!(errs[5].message.contains("above"), "{}", errs[5].message);
}

#[test]
fn successes_are_cached_for_the_ttl_only() {
    let limits = CacheLimits {
        ttl: Duration::from_secs(60),
        max_entries: 16,
    };
    let u = Users::parse(&format!("alice:{}\n", bcrypt4("pw")), limits).expect("users");
    let t0 = Instant::now();
    let pw = Secret::new("pw");
    assert_eq!(u.verify_cached_at("alice", &pw, t0), None);
    assert!(u.verify_at("alice", &Secret::new("wrong"), t0).is_none());
    assert_eq!(
        u.cache.lock().expect("lock").len(),
        0,
        "failures are never cached"
    );
    assert!(u.verify_at("alice", &pw, t0).is_some());
    assert!(u
        .verify_cached_at("alice", &pw, t0 + Duration::from_secs(59))
        .is_some());
    assert!(u
        .verify_cached_at("alice", &Secret::new("wrong"), t0)
        .is_none());
    assert!(u
        .verify_cached_at("alice", &pw, t0 + Duration::from_secs(60))
        .is_none());
    assert_eq!(
        u.cache.lock().expect("lock").len(),
        0,
        "expired entry dropped"
    );
}

#[test]
fn the_cache_is_bounded() {
    let mut c = VerifiedCache::new(CacheLimits {
        ttl: Duration::from_secs(10),
        max_entries: 3,
    });
    let t0 = Instant::now();
    for i in 0..3u8 {
        c.insert([i; 32], t0);
    }
    assert_eq!(c.len(), 3);
    // Full, nothing expired: cleared, then the new one goes in.
    c.insert([9; 32], t0 + Duration::from_secs(1));
    assert_eq!(c.len(), 1);
    c.insert([10; 32], t0 + Duration::from_secs(2));
    c.insert([11; 32], t0 + Duration::from_secs(3));
    // Full again; [9] has expired by t0+11s and makes room.
    c.insert([12; 32], t0 + Duration::from_secs(11));
    assert_eq!(c.len(), 3);
    assert!(c.get(&[9; 32], t0 + Duration::from_secs(11)).is_none());
    assert!(c.get(&[12; 32], t0 + Duration::from_secs(11)).is_some());
    for i in 0..1000u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        c.insert(k, t0);
        assert!(c.len() <= 3);
    }
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?} {s}"), "*** ***");
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Creds {
        user: String,
        password: Secret,
    }
    let shown = format!(
        "{:?}",
        Creds {
            user: "a".into(),
            password: s
        }
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    let u = users(&format!("alice:{}\n", bcrypt4("pw")));
    assert_eq!(
        format!("{u:?}"),
        "Users { count: 1, .. }",
        "no hashes in Debug"
    );
}

#[test]
fn hash_password_round_trips_through_the_file_format() {
    let pw = Secret::new("correct horse");
    let argon = hash_password(&pw, HashAlgorithm::Argon2id).expect("argon2");
    assert!(
        argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{argon}"
    );
    let bc = hash_password(&pw, HashAlgorithm::Bcrypt { cost: 4 }).expect("bcrypt");
    let text = format!(
        "{}\n{}\n",
        format_entry("alice", &argon, &["staff".into()]).expect("line"),
        format_entry("bob", &bc, &[]).expect("line")
    );
    let u = users(&text);
    assert_eq!(
        u.verify("alice", &pw).map(|i| i.groups),
        Some(vec!["staff".to_string()])
    );
    assert!(u.verify("bob", &pw).is_some());
    assert!(format_entry("a:b", &bc, &[]).is_err());
    assert!(format_entry("a", "plain", &[]).is_err());
    assert!(hash_password(
        &Secret::new("x".repeat(73)),
        HashAlgorithm::Bcrypt { cost: 4 }
    )
    .is_err());
}

#[tokio::test]
async fn authenticate_verifies_in_the_pool_and_caches() {
    let u = Arc::new(users(&format!("alice:{}\n", bcrypt4("pw"))));
    let pool = HashPool::new(1, 4).expect("pool");
    let checks = Counter::default();
    let (pw, nope) = (Secret::new("pw"), Secret::new("nope"));
    let ok = u.authenticate(&pool, &checks, "alice", &pw);
    assert!(ok.await.expect("not overloaded").is_some());
    assert!(u.verify_cached("alice", &Secret::new("pw")).is_some());
    let wrong = u.authenticate(&pool, &checks, "alice", &nope);
    assert!(wrong.await.expect("not overloaded").is_none());
    assert_eq!(checks.get(), 2);
    // A cached success runs no check.
    let again = u.authenticate(&pool, &checks, "alice", &pw);
    assert!(again.await.expect("not overloaded").is_some());
    assert_eq!(checks.get(), 2);
}

/// Timing must not tell known names from unknown ones: an unknown name is checked by the
/// same verifier against a dummy of the same algorithm and cost (not a timed test).
#[test]
fn unknown_users_are_checked_against_a_dummy_of_the_same_shape() {
    let argon = |m: u32| {
        let params = argon2::Params::new(m, 1, 1, None).expect("params");
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw")
            .expect("hash")
            .to_string()
    };
    let text = format!(
        "a:{}\nb:{}\nc:{}\nd:{}\n",
        bcrypt4("x"),
        argon(64),
        argon(128),
        argon(128)
    );
    let u = users(&text);
    let (dummy, known) = u.hash_for("nobody");
    assert!(!known);
    let dummy = dummy.expect("a dummy");
    let (c, _) = u.hash_for("c");
    assert_eq!(
        dummy.shape(),
        c.and_then(Hash::shape),
        "the most common shape"
    );
    assert!(matches!(dummy, Hash::Argon2(h) if h.contains("m=128,t=1,p=1")));
    // The dummy is a real hash the verifier runs, and never logs anyone in.
    assert!(dummy.check(b"gatehouse-unknown-user"));
    assert_eq!(
        u.verify("nobody", &Secret::new("gatehouse-unknown-user")),
        None
    );
    // A bcrypt-only file gets a bcrypt dummy of the same cost.
    let b = users(&format!("a:{}\n", bcrypt4("x")));
    let (dummy, _) = b.hash_for("nobody");
    let shape = dummy.and_then(Hash::shape);
    assert_eq!(shape, Some(Shape::Bcrypt { cost: 4 }));
    assert!(users("# nobody\n").hash_for("x").0.is_none());
}

/// The reused-buffer argon2 check agrees with the crate's own verifier, for every cost.
#[test]
fn argon2_checks_reuse_one_buffer_and_agree_with_the_crate() {
    use argon2::password_hash::PasswordVerifier;
    for m in [64, 256, 128, 64] {
        let params = argon2::Params::new(m, 2, 1, Some(24)).expect("params");
        let h = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"right")
            .expect("hash")
            .to_string();
        let ph = PasswordHash::new(&h).expect("phc");
        for (pw, want) in [(&b"right"[..], true), (b"wrong", false), (b"", false)] {
            assert_eq!(verify_argon2(pw, &h), want, "m={m} {pw:?}");
            assert_eq!(Argon2::default().verify_password(pw, &ph).is_ok(), want);
        }
    }
    // The buffer grew to the largest cost (256 KiB) and stayed.
    assert_eq!(ARGON2_MEMORY.with(|m| m.borrow().len()), 256);
    assert!(!verify_argon2(b"x", "$argon2id$v=19$m=64,t=1,p=1$bad"));
}
