//! Tier-1 tests of the appliance image: the checked-in `initramfs/`
//! manifest holds what zonit as `/init` needs, and the demo config is a
//! valid config whose zones come from the template in the image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use zonit_mkinitramfs::{self as cpio, Body, Entry};

const ZONIT: &str = env!("CARGO_BIN_EXE_zonit");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_with(manifest: &Path, env: &dyn Fn(&str) -> Option<String>) -> Vec<Entry> {
    let text = fs::read_to_string(manifest).unwrap();
    let items = cpio::parse(manifest, &text, env).unwrap();
    cpio::collect(manifest, &items).unwrap()
}

/// The zone template as scripts/make-template.sh makes it, in `parent`.
fn make_template(parent: &Path) -> PathBuf {
    let template = parent.join("template");
    let made = std::process::Command::new(repo().join("scripts/make-template.sh"))
        .arg(&template)
        .status()
        .unwrap();
    assert!(made.success(), "scripts/make-template.sh failed");
    template
}

/// Fails under CI (where busybox-static is part of the set-up) and skips
/// elsewhere when the host has no /bin/busybox.
fn have_busybox() -> bool {
    if Path::new("/bin/busybox").exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "/bin/busybox missing: install busybox-static"
    );
    eprintln!("skipping: /bin/busybox missing (install busybox-static)");
    false
}

#[test]
fn appliance_manifest_has_init_console_config_and_template() {
    if !have_busybox() {
        return;
    }
    let manifest = repo().join("initramfs/manifest");
    let lib = tempfile::tempdir().unwrap();
    fs::create_dir_all(lib.path().join("modules/6.1.0-test/kernel")).unwrap();
    let demo_path = repo().join("initramfs/demo.toml");
    let template = make_template(lib.path());
    fs::remove_dir(template.join("tmp")).unwrap();
    let entries = load_with(&manifest, &|v| match v {
        "ZONIT_TEMPLATE" => Some(template.to_string_lossy().into_owned()),
        "ZONIT_BIN" => Some(ZONIT.to_string()),
        "ZONIT_CONFIG" => Some(demo_path.to_string_lossy().into_owned()),
        "ZONIT_LIB" => Some(lib.path().to_string_lossy().into_owned()),
        _ => None,
    });
    let get = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} missing from the initramfs"))
    };
    assert_eq!(get("/init").body, Body::File(fs::read(ZONIT).unwrap()));
    assert_eq!(get("/init").owner.mode, 0o755);
    assert_eq!(
        get("/dev/console").body,
        Body::CharDev { major: 5, minor: 1 }
    );
    assert_eq!(get("/dev/null").body, Body::CharDev { major: 1, minor: 3 });
    let demo = fs::read(repo().join("initramfs/demo.toml")).unwrap();
    assert_eq!(get("/etc/zonit.toml").body, Body::File(demo));
    for dir in ["/proc", "/sys", "/run", "/tmp", "/zones", "/templates/base"] {
        assert_eq!(get(dir).body, Body::Dir, "{dir}");
    }
    assert_eq!(get("/bin/sh").body, Body::Symlink("busybox".into()));
    assert_eq!(get("/bin/zonit").body, Body::Symlink("../init".into()));
    assert_eq!(get("/lib/modules/6.1.0-test/kernel").body, Body::Dir);
    for applet in [
        "sh", "echo", "cat", "sleep", "ls", "ps", "hostname", "mount", "true", "false", "kill",
        "id", "wc", "head", "grep",
    ] {
        let name = format!("/templates/base/bin/{applet}");
        assert_eq!(get(&name).body, Body::Symlink("busybox".into()), "{name}");
    }
    assert!(matches!(
        get("/templates/base/bin/busybox").body,
        Body::File(_)
    ));
    assert!(matches!(
        get("/templates/base/etc/passwd").body,
        Body::File(_)
    ));
    assert_eq!(get("/templates/base/tmp").owner.mode, 0o1777);
}

#[test]
fn demo_config_zones_come_from_the_template_in_the_initramfs() {
    let path = repo().join("initramfs/demo.toml");
    let text = fs::read_to_string(&path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let zones = doc["zone"].as_table().unwrap();
    assert!(zones.len() >= 2, "the demo shows several zones");
    assert!(doc.get("guest").is_none(), "guests are not in the demo yet");
    let manifest = fs::read_to_string(repo().join("initramfs/manifest")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let made = have_busybox().then(|| make_template(scratch.path()));
    for (name, zone) in zones {
        let template = zone["template"].as_str().unwrap();
        assert!(
            manifest.contains(&format!("tree {template} ${{ZONIT_TEMPLATE}}")),
            "{name}: {template} not in the manifest"
        );
        assert_eq!(
            zone["root"].as_str(),
            Some(format!("/zones/{name}").as_str())
        );
        assert_eq!(zone["template_mode"].as_str(), Some("overlay"));
        let command = zone["command"].as_array().unwrap();
        let program = command[0].as_str().unwrap();
        if let Some(made) = &made {
            assert!(
                made.join(program.trim_start_matches('/')).exists(),
                "{name}: {program} is not in the template"
            );
        }
    }
    assert!(
        zones
            .values()
            .any(|z| z["restart"].as_str() == Some("on-failure")
                && z["command"].to_string().contains("exit 3")),
        "the demo has a crash-looping zone"
    );
    assert!(
        zones.values().any(|z| z.get("after").is_some()),
        "the demo shows ordering"
    );

    // Once the config parser exists, the demo must pass it too.
    match zonit::config::parse(&path, &text) {
        Ok(config) => assert_eq!(config.units.len(), zones.len()),
        Err(diags) if diags.iter().any(|d| d.message.contains("not written yet")) => {}
        Err(diags) => panic!(
            "demo.toml is not a valid config:\n{}",
            diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn data_disk_demo_keeps_its_counter_on_the_disk_and_is_a_valid_config() {
    let path = repo().join("initramfs/data-demo.toml");
    let text = fs::read_to_string(&path).unwrap();
    let config = zonit::config::parse(&path, &text).unwrap_or_else(|diags| {
        panic!(
            "data-demo.toml is not a valid config:\n{}",
            diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let mounts = &config.host.mounts;
    assert_eq!(mounts.len(), 1);
    assert!(config.host.modules.contains(&"virtio_blk".to_string()));
    let root_of = |name: &str| match &config.unit(name).unwrap().kind {
        zonit::config::UnitKind::Zone(z) => z.root.clone(),
        other => panic!("{name} is not a zone: {other:?}"),
    };
    assert!(root_of("counter").starts_with(&mounts[0].target));
    assert!(!root_of("scratch").starts_with(&mounts[0].target));
}
