//! Tests of the whole parser: the reference example, each kind of error with its
//! position, several errors at once, defaults merging and `after` cycles.

// A failed test should stop right where it fails.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const REFERENCE_EXAMPLE: &str = r#"[host]
hostname = "edge-01"
modules = ["kvm_amd"]          # loaded at boot, dependencies resolved from modules.dep
sysctl = { "net.ipv4.ip_forward" = "1" }
log_level = "info"             # error|warn|info|debug|trace
syslog = "udp://192.0.2.10:514"  # optional remote syslog (RFC 5424)
control_socket = "/run/zonit/control.sock"
shutdown_timeout = "30s"       # bound on the whole orderly shutdown
ctrl_alt_del = "reboot"        # reboot|poweroff|ignore
rescue_shell = "/bin/sh"       # optional: started on the console if the config cannot be loaded
exit_with = "selftest"         # optional (test mode): when this unit ends, shut down and report its status

[defaults]                     # any zone/guest key that makes sense as a default
restart = "on-failure"
backoff = { initial = "100ms", max = "30s", reset_after = "60s" }

[zone.web]
root = "/zones/web"            # the zone's root directory
template = "/templates/base"   # optional: provision root from this tree
template_mode = "overlay"      # overlay (shared read-only lower, per-zone upper) | copy (once, on first start)
command = ["/bin/httpd", "-f", "-p", "8080"]
hostname = "web"
env = { PORT = "8080" }
workdir = "/"
user = "1000:1000"             # uid:gid inside the zone
capabilities = ["CAP_NET_BIND_SERVICE"]  # kept; every other one dropped (default: Docker's default set)
mounts = [{ source = "/data/web", target = "/srv", readonly = true }]
network = "none"               # loopback only (more modes come later)
memory_max = "128M"            # cgroup v2 memory.max
cpu_max = 0.5                  # CPUs, cgroup v2 cpu.max
pids_max = 64                  # cgroup v2 pids.max
after = ["db"]                 # start after these are running; stop before them
restart = "always"
stop_signal = "SIGTERM"
stop_timeout = "10s"
autostart = true

[guest.router]
kernel = "/guests/vmlinuz"     # bzImage, ELF vmlinux, or PVH ELF
initrd = "/guests/router.cpio.gz"
cmdline = "console=ttyS0"
memory = "256M"
vcpus = 2
disks = [{ path = "/guests/router.img", readonly = false }]
restart = "always"
on_reboot = "restart"          # what a guest-initiated reboot does: restart|stop
stop_timeout = "20s"           # graceful stop (guest told to shut down), then the monitor is killed
after = ["web"]
"#;

/// The units the reference example refers to but does not define.
const REFERENCE_EXTRA_UNITS: &str = r#"
[zone.db]
root = "/zones/db"
command = ["/bin/db"]

[zone.selftest]
root = "/zones/selftest"
command = ["/bin/selftest"]
restart = "never"
"#;

pub(super) fn parse_str(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse(Path::new("test.toml"), text)
}

pub(super) fn ok(text: &str) -> Config {
    match parse_str(text) {
        Ok(config) => config,
        Err(diags) => panic!("expected a valid config, got:\n{}", render(&diags)),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_str(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(diags) => diags,
    }
}

pub(super) fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{d}\n")).collect::<String>()
}

/// Asserts that exactly one diagnostic at `line:col` mentions every
/// string of `needles`.
fn assert_error_at(diags: &[Diagnostic], line: usize, col: usize, needles: &[&str]) {
    let here: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.line == line && d.col == col)
        .filter(|d| needles.iter().all(|n| d.message.contains(n)))
        .collect();
    assert_eq!(
        here.len(),
        1,
        "expected one diagnostic at {line}:{col} mentioning {needles:?}, got:\n{}",
        render(diags)
    );
}

fn zone<'a>(config: &'a Config, name: &str) -> &'a Zone {
    match config.unit(name).map(|u| &u.kind) {
        Some(UnitKind::Zone(z)) => z,
        other => panic!("{name} is not a zone: {other:?}"),
    }
}

fn guest<'a>(config: &'a Config, name: &str) -> &'a Guest {
    match config.unit(name).map(|u| &u.kind) {
        Some(UnitKind::Guest(g)) => g,
        other => panic!("{name} is not a guest: {other:?}"),
    }
}

const MINIMAL_ZONE: &str = "[zone.a]\nroot = \"/zones/a\"\ncommand = [\"/bin/a\"]\n";

#[test]
fn reference_example_parses_into_the_expected_values() {
    let config = ok(&format!("{REFERENCE_EXAMPLE}{REFERENCE_EXTRA_UNITS}"));

    let host = &config.host;
    assert_eq!(host.hostname.as_deref(), Some("edge-01"));
    assert_eq!(host.modules, ["kvm_amd"]);
    assert_eq!(
        host.sysctl,
        BTreeMap::from([("net.ipv4.ip_forward".to_owned(), "1".to_owned())])
    );
    assert_eq!(host.log_level, log::LevelFilter::Info);
    let syslog: SocketAddr = "192.0.2.10:514".parse().unwrap();
    assert_eq!(host.syslog, Some(SyslogTarget::Udp(syslog)));
    assert_eq!(
        host.control_socket,
        PathBuf::from("/run/zonit/control.sock")
    );
    assert_eq!(host.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(host.ctrl_alt_del, CtrlAltDel::Reboot);
    assert_eq!(host.rescue_shell, Some(PathBuf::from("/bin/sh")));
    assert_eq!(host.exit_with.as_deref(), Some("selftest"));

    let names: Vec<&str> = config.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["web", "router", "db", "selftest"]);

    let web = config.unit("web").unwrap();
    assert_eq!(
        web.common,
        Common {
            restart: RestartPolicy::Always,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                reset_after: Duration::from_secs(60),
            },
            start_limit: None,
            after: vec!["db".to_owned()],
            stop_timeout: Duration::from_secs(10),
            autostart: true,
            ready: None,
            health: None,
        }
    );
    assert_eq!(
        *zone(&config, "web"),
        Zone {
            root: PathBuf::from("/zones/web"),
            template: Some(PathBuf::from("/templates/base")),
            template_mode: TemplateMode::Overlay,
            command: vec!["/bin/httpd".into(), "-f".into(), "-p".into(), "8080".into()],
            hostname: "web".into(),
            env: BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]),
            workdir: PathBuf::from("/"),
            user: (1000, 1000),
            capabilities: vec![10],
            mounts: vec![BindMount {
                source: PathBuf::from("/data/web"),
                target: PathBuf::from("/srv"),
                readonly: true,
            }],
            network: Network::None,
            ports: vec![],
            memory_max: Some(128 << 20),
            cpu_max: Some(0.5),
            pids_max: Some(64),
            rlimits: BTreeMap::new(),
            stop_signal: libc::SIGTERM,
        }
    );

    let router = config.unit("router").unwrap();
    assert_eq!(router.common.restart, RestartPolicy::Always);
    assert_eq!(router.common.stop_timeout, Duration::from_secs(20));
    assert_eq!(router.common.after, ["web"]);
    assert_eq!(
        *guest(&config, "router"),
        Guest {
            kernel: PathBuf::from("/guests/vmlinuz"),
            initrd: Some(PathBuf::from("/guests/router.cpio.gz")),
            cmdline: "console=ttyS0".into(),
            memory: 256 << 20,
            vcpus: 2,
            disks: vec![Disk {
                path: PathBuf::from("/guests/router.img"),
                readonly: false,
            }],
            on_reboot: OnReboot::Restart,
            memory_max: None,
            cpu_max: None,
            pids_max: None,
            nics: vec![],
            ports: vec![],
        }
    );

    // Only `restart` comes from [defaults] for db; the rest is built in.
    let db = config.unit("db").unwrap();
    assert_eq!(db.common.restart, RestartPolicy::OnFailure);
    assert_eq!(
        config.unit("selftest").unwrap().common.restart,
        RestartPolicy::Never
    );
}

#[test]
fn spec_example_alone_reports_its_dangling_references() {
    let diags = errors(REFERENCE_EXAMPLE);
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    // exit_with = "selftest"
    assert_error_at(&diags, 11, 13, &["exit_with", "selftest", "[host]"]);
    // after = ["db"] in [zone.web]
    assert_error_at(&diags, 32, 10, &["after", "[zone.web]", "`db`"]);
}

#[test]
fn built_in_defaults_fill_a_minimal_file() {
    let config = ok(concat!(
        "[zone.a]\nroot = \"/zones/a\"\ncommand = [\"/bin/a\"]\n",
        "[guest.g]\nkernel = \"/k\"\n",
    ));
    assert_eq!(config.host.log_level, log::LevelFilter::Info);
    assert_eq!(
        config.host.control_socket,
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    );
    assert_eq!(config.host.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.host.ctrl_alt_del, CtrlAltDel::Reboot);
    assert_eq!(config.host.syslog, None);

    let a = config.unit("a").unwrap();
    assert_eq!(a.common.restart, RestartPolicy::OnFailure);
    assert_eq!(a.common.backoff, Backoff::default());
    assert_eq!(a.common.start_limit, None);
    assert_eq!(a.common.stop_timeout, Duration::from_secs(10));
    assert!(a.common.autostart);
    let z = zone(&config, "a");
    assert_eq!(z.hostname, "a");
    assert_eq!(z.workdir, PathBuf::from("/"));
    assert_eq!(z.user, (0, 0));
    assert_eq!(z.template_mode, TemplateMode::Overlay);
    assert_eq!(z.network, Network::None);
    assert_eq!(z.stop_signal, libc::SIGTERM);
    assert_eq!(
        z.capabilities,
        [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
    );

    let g = guest(&config, "g");
    assert_eq!(g.memory, 128 << 20);
    assert_eq!(g.vcpus, 1);
    assert_eq!(g.cmdline, "console=ttyS0");
    assert_eq!(g.on_reboot, OnReboot::Restart);
}

#[test]
fn empty_file_is_a_valid_config_with_no_units() {
    let config = ok("");
    assert!(config.units.is_empty());
}

#[test]
fn units_keep_file_order_across_zones_and_guests() {
    let config = ok(concat!(
        "[guest.z]\nkernel = \"/k\"\n",
        "[zone.m]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
        "[guest.a]\nkernel = \"/k\"\n",
        "[zone.b]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
    ));
    let names: Vec<&str> = config.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["z", "m", "a", "b"]);
}

#[test]
fn unknown_key_in_zone_is_reported_with_its_position() {
    let diags =
        errors("[zone.web]\nroot = \"/zones/web\"\n  rootfs = \"/x\"\ncommand = [\"/a\"]\n");
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(
        &diags,
        3,
        3,
        &[
            "unknown key `rootfs` in [zone.web]",
            "did you mean `root`?",
            "expected one of: root, template",
        ],
    );
    assert_eq!(
        diags[0].to_string().split(": ").next(),
        Some("test.toml:3:3")
    );
}

#[test]
fn every_unknown_key_is_reported_not_just_the_first() {
    let diags = errors(concat!(
        "[host]\nbogus1 = 1\nbogus2 = 2\n", // 1-3
        "[zone.a]\nroot = \"/r\"\ncommand = [\"/x\"]\nfoo = 1\nbar = 2\n", // 4-8
        "backoff = { initial = \"1s\", nope = \"1s\" }\n", // 9
        "mounts = [{ source = \"/a\", target = \"/b\", ro = true }]\n", // 10
        "rlimits = { nofiles = 10 }\n",     // 11
        "[guest.g]\nkernel = \"/k\"\nroot = \"/r\"\n", // 12-14
        "[zoen.x]\n",                       // 15
    ));
    assert_eq!(diags.len(), 9, "{}", render(&diags));
    assert_error_at(&diags, 2, 1, &["`bogus1`", "[host]"]);
    assert_error_at(&diags, 3, 1, &["`bogus2`", "[host]"]);
    assert_error_at(&diags, 7, 1, &["`foo`", "[zone.a]"]);
    assert_error_at(&diags, 8, 1, &["`bar`", "[zone.a]"]);
    assert_error_at(
        &diags,
        9,
        29,
        &[
            "`nope`",
            "`backoff` of [zone.a]",
            "initial, max, reset_after",
        ],
    );
    assert_error_at(
        &diags,
        10,
        43,
        &["`ro`", "`mounts[0]` of [zone.a]", "readonly"],
    );
    assert_error_at(
        &diags,
        11,
        13,
        &[
            "`nofiles`",
            "`rlimits` of [zone.a]",
            "did you mean `nofile`?",
        ],
    );
    assert_error_at(&diags, 14, 1, &["`root`", "[guest.g]", "zone setting"]);
    assert_error_at(
        &diags,
        15,
        2,
        &["unknown section `zoen`", "did you mean [zone]?"],
    );
    // The zone's other keys were still read: its name is checked, too.
    assert!(diags.iter().all(|d| !d.message.contains("has no")));
}

#[test]
fn errors_are_sorted_by_position() {
    let diags = errors("[zone.b]\nroot = \"x\"\ncommand = []\n[host]\nlog_level = \"loud\"\n");
    let positions: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.col)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
    assert_eq!(diags.len(), 3, "{}", render(&diags));
}

#[test]
fn wrong_types_in_different_keys_and_units_are_all_reported() {
    let diags = errors(concat!(
        "[zone.a]\n",
        "root = 5\n",              // 2
        "command = \"/bin/sh\"\n", // 3
        "autostart = \"yes\"\n",   // 4
        "[zone.b]\n",
        "root = \"/r\"\n",
        "command = [\"/x\"]\n",
        "pids_max = \"many\"\n", // 8
    ));
    assert_eq!(diags.len(), 4, "{}", render(&diags));
    assert_error_at(&diags, 2, 8, &["invalid `root` in [zone.a]", "string"]);
    assert_error_at(
        &diags,
        3,
        11,
        &["invalid `command` in [zone.a]", "expected an array"],
    );
    assert_error_at(&diags, 4, 13, &["invalid `autostart` in [zone.a]", "bool"]);
    assert_error_at(&diags, 8, 12, &["invalid `pids_max` in [zone.b]"]);
    // root and command were present but unreadable: no "missing" on top.
    assert!(diags.iter().all(|d| !d.message.contains("has no")));
}

#[test]
fn missing_required_keys_point_at_the_unit_header() {
    let diags = errors("[zone.web]\nhostname = \"w\"\n\n[guest.vm]\nvcpus = 1\n");
    assert_eq!(diags.len(), 3, "{}", render(&diags));
    assert_error_at(&diags, 1, 7, &["[zone.web] has no `command`"]);
    assert_error_at(&diags, 4, 8, &["[guest.vm] has no `kernel`"]);
    assert_error_at(
        &diags,
        1,
        7,
        &["[zone.web] has no `root`", "root = \"/zones/web\""],
    );
}

#[test]
fn syntax_errors_are_reported_with_positions_and_stop_checking() {
    let diags = errors("[host]\nhostname = \"x\nbogus = 1\n[zone.a\n");
    assert!(!diags.is_empty());
    assert!(
        diags.iter().all(|d| d.message.starts_with("TOML syntax")),
        "{}",
        render(&diags)
    );
    assert_eq!(diags[0].line, 2, "{}", render(&diags));
    // The unknown key is not checked in a broken file.
    assert!(diags.iter().all(|d| !d.message.contains("bogus")));
}

#[test]
fn a_duplicate_table_is_one_error_at_its_second_header() {
    let diags = errors(&format!("{MINIMAL_ZONE}{MINIMAL_ZONE}[host]\nbogus = 1\n"));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_eq!((diags[0].line, diags[0].col), (4, 1), "{}", render(&diags));
    assert!(
        diags[0].message.contains("[zone.a] appears twice"),
        "{}",
        render(&diags)
    );
}

#[test]
fn a_duplicate_key_in_a_table_is_still_reported_after_a_duplicate_table() {
    let diags = errors(&format!(
        "{MINIMAL_ZONE}{MINIMAL_ZONE}[zone.b]\nroot = \"/b\"\nroot = \"/c\"\n"
    ));
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert!(
        diags[1].message.contains("duplicate key"),
        "{}",
        render(&diags)
    );
}

#[test]
fn bad_durations_and_sizes_point_at_the_value() {
    let diags = errors(concat!(
        "[defaults]\n",
        "stop_timeout = \"10\"\n",                                 // 2
        "backoff = { max = \"3 s\" }\n",                           // 3
        "memory_max = \"64MB\"\n",                                 // 4
        "memory = -5\n",                                           // 5
        "[host]\nshutdown_timeout = \"999999999999999999999h\"\n", // 6-7
    ));
    assert_eq!(diags.len(), 5, "{}", render(&diags));
    assert_error_at(
        &diags,
        2,
        16,
        &["`stop_timeout` in [defaults]", "no unit", "\"10s\""],
    );
    assert_error_at(
        &diags,
        3,
        19,
        &["`backoff.max` in [defaults]", "unknown unit"],
    );
    assert_error_at(&diags, 4, 14, &["`memory_max`", "unknown unit \"MB\""]);
    assert_error_at(&diags, 5, 10, &["`memory`", "negative"]);
    assert_error_at(
        &diags,
        7,
        20,
        &["`shutdown_timeout` in [host]", "too large"],
    );
}

#[test]
fn bad_names_are_reported_at_the_header() {
    let diags = errors(concat!(
        "[zone.Web]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
        "[guest.-vm]\nkernel = \"/k\"\n",
        "[zone.this-name-is-far-too-long-for-a-unit-name]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
    ));
    assert_eq!(diags.len(), 3, "{}", render(&diags));
    assert_error_at(&diags, 1, 7, &["invalid name `Web`", "a-z, 0-9"]);
    assert_error_at(&diags, 4, 8, &["invalid name `-vm`"]);
    assert_error_at(&diags, 6, 7, &["invalid name"]);
}

#[test]
fn a_name_shared_by_a_zone_and_a_guest_is_an_error() {
    let diags = errors("[zone.x]\nroot = \"/r\"\ncommand = [\"/x\"]\n[guest.x]\nkernel = \"/k\"\n");
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(
        &diags,
        4,
        8,
        &["[guest.x] has the same name as [zone.x] (line 1)"],
    );
}

#[test]
fn after_naming_an_unknown_unit_is_reported_with_a_suggestion() {
    let diags = errors(&format!(
        "{MINIMAL_ZONE}after = [\"b\", \"zz\"]\n[zone.bb]\nroot = \"/r\"\ncommand = [\"/x\"]\n"
    ));
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert_error_at(
        &diags,
        4,
        10,
        &["`after` in [zone.a] names `b`", "did you mean `bb`?"],
    );
    assert_error_at(&diags, 4, 15, &["names `zz`"]);
}

#[test]
fn after_cycle_is_named_in_order() {
    let diags = errors(concat!(
        "[zone.a]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"b\"]\n",
        "[zone.b]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"c\"]\n",
        "[guest.c]\nkernel = \"/k\"\nafter = [\"a\"]\n",
    ));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(
        &diags,
        11,
        10,
        &["`after` in [guest.c]", "cycle: a -> b -> c -> a"],
    );
}

#[test]
fn unit_after_itself_is_a_cycle() {
    let diags = errors(&format!("{MINIMAL_ZONE}after = [\"a\"]\n"));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(&diags, 4, 10, &["cycle: a -> a"]);
}

#[test]
fn separate_cycles_are_each_reported_and_a_diamond_is_not_a_cycle() {
    let diags = errors(concat!(
        "[zone.a]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"b\"]\n",
        "[zone.b]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"a\"]\n",
        "[zone.c]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"d\"]\n",
        "[zone.d]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"c\"]\n",
    ));
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert!(diags[0].message.contains("a -> b -> a"));
    assert!(diags[1].message.contains("c -> d -> c"));

    let config = ok(concat!(
        "[zone.top]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"l\", \"r\", \"l\"]\n",
        "[zone.l]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"base\"]\n",
        "[zone.r]\nroot = \"/r\"\ncommand = [\"/x\"]\nafter = [\"base\"]\n",
        "[zone.base]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
    ));
    // Repeated entries are kept once.
    assert_eq!(config.unit("top").unwrap().common.after, ["l", "r"]);
}

#[test]
fn exit_with_naming_an_unknown_unit_is_reported() {
    let diags = errors(&format!("[host]\nexit_with = \"b\"\n{MINIMAL_ZONE}"));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(&diags, 2, 13, &["exit_with", "`b` is no zone or guest"]);
}

#[test]
fn rlimits_are_resolved_to_the_resources_the_zone_start_sets() {
    let config = ok(concat!(
        "[defaults]\nrlimits = { nofile = 1024, core = 0 }\n",
        "[zone.a]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
        "rlimits = { stack = \"unlimited\", core = 1 }\n",
    ));
    let limits: Vec<(nix::sys::resource::Resource, u64)> = zone(&config, "a")
        .rlimits
        .iter()
        .map(|(&r, &v)| (r, v))
        .collect();
    let mut want = vec![
        (Resource::RLIMIT_NOFILE, 1024),
        (Resource::RLIMIT_CORE, 1),
        (Resource::RLIMIT_STACK, libc::RLIM_INFINITY),
    ];
    want.sort();
    assert_eq!(limits, want);
}

#[test]
fn a_bad_rlimit_name_or_value_in_defaults_is_an_error_at_its_position() {
    let diags = errors(&format!(
        "[defaults]\nrlimits = {{ nofiles = 1, core = \"lots\" }}\n{MINIMAL_ZONE}"
    ));
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert_error_at(
        &diags,
        2,
        13,
        &[
            "`nofiles`",
            "`rlimits` of [defaults]",
            "did you mean `nofile`?",
        ],
    );
    assert_error_at(
        &diags,
        2,
        33,
        &["`rlimits.core` in [defaults]", "\"unlimited\""],
    );
}

#[test]
fn defaults_apply_to_the_right_kind_and_units_win() {
    let config = ok(concat!(
        "[defaults]\n",
        "restart = \"always\"\n",
        "stop_timeout = \"3s\"\n",
        "autostart = false\n",
        "backoff = { initial = \"1s\" }\n",
        "start_limit = { burst = 5, interval = \"10s\" }\n",
        "user = \"100:100\"\n",
        "capabilities = [\"kill\"]\n",
        "memory_max = \"64M\"\n",
        "cpu_max = 1\n",
        "pids_max = 32\n",
        "rlimits = { nofile = 1024, core = 0 }\n",
        "stop_signal = \"INT\"\n",
        "network = \"none\"\n",
        "env = { A = \"1\", B = \"2\" }\n",
        "memory = \"512M\"\n",
        "vcpus = 4\n",
        "cmdline = \"console=ttyS0 quiet\"\n",
        "on_reboot = \"stop\"\n",
        "[zone.a]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
        "[zone.b]\nroot = \"/r\"\ncommand = [\"/x\"]\n",
        "restart = \"never\"\nbackoff = { max = \"5s\" }\nuser = \"0:0\"\n",
        "env = { B = \"own\", C = \"3\" }\nrlimits = { nofile = \"unlimited\" }\n",
        "[guest.g]\nkernel = \"/k\"\nvcpus = 2\n",
    ));
    let a = config.unit("a").unwrap();
    assert_eq!(a.common.restart, RestartPolicy::Always);
    assert_eq!(a.common.stop_timeout, Duration::from_secs(3));
    assert!(!a.common.autostart);
    assert_eq!(
        a.common.backoff,
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    );
    assert_eq!(
        a.common.start_limit,
        Some(StartLimit {
            burst: 5,
            interval: Duration::from_secs(10)
        })
    );
    let za = zone(&config, "a");
    assert_eq!(za.user, (100, 100));
    assert_eq!(za.capabilities, [5]);
    assert_eq!(za.memory_max, Some(64 << 20));
    assert_eq!(za.cpu_max, Some(1.0));
    assert_eq!(za.pids_max, Some(32));
    assert_eq!(za.stop_signal, libc::SIGINT);
    assert_eq!(za.rlimits.get(&Resource::RLIMIT_NOFILE), Some(&1024));
    assert_eq!(za.rlimits.get(&Resource::RLIMIT_CORE), Some(&0));

    let b = config.unit("b").unwrap();
    assert_eq!(b.common.restart, RestartPolicy::Never);
    // Backoff merges per field: unit, then [defaults], then built in.
    assert_eq!(b.common.backoff.initial, Duration::from_secs(1));
    assert_eq!(b.common.backoff.max, Duration::from_secs(5));
    assert_eq!(b.common.backoff.reset_after, Duration::from_secs(60));
    let zb = zone(&config, "b");
    assert_eq!(zb.user, (0, 0));
    let env: Vec<(&str, &str)> = zb
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("A", "1"), ("B", "own"), ("C", "3")]);
    assert_eq!(
        zb.rlimits.get(&Resource::RLIMIT_NOFILE),
        Some(&libc::RLIM_INFINITY)
    );
    assert_eq!(zb.rlimits.get(&Resource::RLIMIT_CORE), Some(&0));

    let g = config.unit("g").unwrap();
    assert_eq!(g.common.restart, RestartPolicy::Always);
    let gg = guest(&config, "g");
    assert_eq!(gg.memory, 512 << 20);
    assert_eq!(gg.vcpus, 2);
    assert_eq!(gg.cmdline, "console=ttyS0 quiet");
    assert_eq!(gg.on_reboot, OnReboot::Stop);
}

#[test]
fn bad_default_is_reported_once_at_defaults() {
    let diags = errors(concat!(
        "[defaults]\nmemory = \"8M\"\n",
        "[guest.a]\nkernel = \"/k\"\n",
        "[guest.b]\nkernel = \"/k\"\n",
    ));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(
        &diags,
        2,
        10,
        &["`memory` in [defaults]", "8M is too little", "at least 16M"],
    );
}

#[test]
fn unit_specific_key_in_defaults_gets_advice() {
    let diags = errors("[defaults]\nroot = \"/r\"\nafter = [\"x\"]\n");
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert_error_at(
        &diags,
        2,
        1,
        &["unknown key `root` in [defaults]", "has no default"],
    );
    assert_error_at(&diags, 3, 1, &["unknown key `after`"]);
}

#[test]
fn zone_values_are_validated() {
    let diags = errors(concat!(
        "[zone.z]\n",
        "root = \"zones/z\"\n",                                          // 2
        "command = []\n",                                                // 3
        "template_mode = \"clone\"\n",                                   // 4
        "user = \"www\"\n",                                              // 5
        "capabilities = [\"CAP_NET_ADMIN\", \"CAP_FLY\"]\n",             // 6
        "cpu_max = 0\n",                                                 // 7
        "stop_signal = \"SIGFOO\"\n",                                    // 8
        "mounts = [{ source = \"data\", target = \"/a/../../etc\" }]\n", // 9
        "hostname = \"bad_host\"\n",                                     // 10
        "network = \"bridge\"\n",                                        // 11
        "pids_max = 0\n",                                                // 12
        "restart = \"sometimes\"\n",                                     // 13
        "rlimits = { nproc = -1 }\n",                                    // 14
    ));
    assert_error_at(&diags, 2, 8, &["`root`", "not an absolute path"]);
    assert_error_at(&diags, 3, 11, &["`command`", "empty"]);
    assert_error_at(&diags, 4, 17, &["`template_mode`", "overlay, copy"]);
    assert_error_at(&diags, 5, 8, &["`user`", "UID:GID"]);
    assert_error_at(&diags, 6, 34, &["`capabilities`", "CAP_FLY"]);
    assert_error_at(&diags, 7, 11, &["`cpu_max`", "positive"]);
    assert_error_at(&diags, 8, 15, &["`stop_signal`", "SIGFOO", "SIGTERM"]);
    assert_error_at(&diags, 9, 22, &["`mounts[0].source`", "absolute"]);
    assert_error_at(&diags, 9, 39, &["`mounts[0].target`", "`..`"]);
    assert_error_at(&diags, 10, 12, &["`hostname`"]);
    assert_error_at(&diags, 11, 11, &["`network`", "none"]);
    assert_error_at(&diags, 12, 12, &["`pids_max`", "positive"]);
    assert_error_at(&diags, 13, 11, &["`restart`", "never, on-failure, always"]);
    assert_error_at(&diags, 14, 21, &["`rlimits.nproc`"]);
    assert_eq!(diags.len(), 14, "{}", render(&diags));
}

#[test]
fn template_mode_without_template_is_an_error() {
    let diags = errors(&format!("{MINIMAL_ZONE}template_mode = \"copy\"\n"));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(&diags, 4, 17, &["no effect without `template`"]);
}

#[test]
fn overlay_paths_that_the_mount_options_would_split_are_refused() {
    let diags = errors(
        "[zone.a]\nroot = \"/zones/a,b\"\ncommand = [\"/bin/a\"]\ntemplate = \"/t/a:/t/b\"\n",
    );
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert_error_at(&diags, 2, 8, &["`root`", "holds `,`", "overlayfs"]);
    assert_error_at(&diags, 4, 12, &["`template`", "holds `:`"]);
    let diags = errors(&format!("{MINIMAL_ZONE}template = \"/t\\\\x\"\n"));
    assert_error_at(&diags, 4, 12, &["holds `\\`"]);
    // A copied template never goes into mount options; nor does a plain root.
    ok(
        "[zone.a]\nroot = \"/zones/a,b\"\ncommand = [\"/bin/a\"]\ntemplate = \"/t/a:b\"\ntemplate_mode = \"copy\"\n",
    );
    ok("[zone.a]\nroot = \"/zones/a:b,c\"\ncommand = [\"/bin/a\"]\n");
}

#[test]
fn capabilities_accept_any_spelling_and_are_deduplicated() {
    let config = ok(&format!(
        "{MINIMAL_ZONE}capabilities = [\"net_raw\", \"CAP_CHOWN\", \"Cap_Net_Raw\"]\n"
    ));
    assert_eq!(zone(&config, "a").capabilities, [0, 13]);
    let config = ok(&format!("{MINIMAL_ZONE}capabilities = []\n"));
    assert!(zone(&config, "a").capabilities.is_empty());
}

#[test]
fn guest_values_are_validated() {
    let diags = errors(concat!(
        "[guest.g]\n",
        "kernel = \"vmlinuz\"\n",                                       // 2
        "vcpus = 0\n",                                                  // 3
        "memory = \"15M\"\n",                                           // 4
        "on_reboot = \"again\"\n",                                      // 5
        "disks = [{ path = \"disk.img\" }]\n",                          // 6
        "[guest.h]\nkernel = \"/k\"\nvcpus = 256\nmemory = 16777216\n", // 7-10
        "start_limit = { burst = 0, interval = \"0s\" }\n",             // 11
        "backoff = { initial = \"0ms\" }\n",                            // 12
    ));
    assert_error_at(&diags, 2, 10, &["`kernel`", "absolute"]);
    assert_error_at(&diags, 3, 9, &["`vcpus`", "between 1 and 254"]);
    assert_error_at(&diags, 4, 10, &["`memory`", "at least 16M"]);
    assert_error_at(&diags, 5, 13, &["`on_reboot`", "restart, stop"]);
    assert_error_at(&diags, 6, 19, &["`disks[0].path`"]);
    assert_error_at(&diags, 9, 9, &["`vcpus` in [guest.h]"]);
    assert_error_at(&diags, 11, 25, &["`start_limit.burst`"]);
    assert_error_at(&diags, 11, 39, &["`start_limit.interval`", "above zero"]);
    assert_error_at(&diags, 12, 23, &["`backoff.initial`", "above zero"]);
    assert_eq!(diags.len(), 9, "{}", render(&diags));
}

#[test]
fn guests_outside_the_monitors_limits_are_refused() {
    let disks = "{ path = \"/d\" }, ".repeat(8);
    let diags = errors(&format!(
        concat!(
            "[guest.g]\n",
            "kernel = \"/k\"\n",
            "vcpus = 255\n",         // 3
            "memory = \"65538K\"\n", // 4
            "[guest.h]\n",
            "kernel = \"/k\"\n",
            "memory = \"2T\"\n",                     // 7
            "disks = [{}{{ path = \"/ninth\" }}]\n", // 8
            "[guest.i]\n",
            "kernel = \"/k\"\n",
            "vcpus = 254\n",
            "memory = \"1T\"\n",
            "disks = [{}]\n",
        ),
        disks, disks
    ));
    assert_error_at(&diags, 3, 9, &["`vcpus` in [guest.g]", "between 1 and 254"]);
    assert_error_at(
        &diags,
        4,
        10,
        &["`memory` in [guest.g]", "65538K", "multiple of 4 KiB"],
    );
    assert_error_at(
        &diags,
        7,
        10,
        &["`memory` in [guest.h]", "2T", "at most 1T"],
    );
    assert_error_at(&diags, 8, 146, &["`disks` in [guest.h]", "9", "at most 8"]);
    assert_eq!(diags.len(), 4, "{}", render(&diags));
}

#[test]
fn disks_and_nics_share_the_eight_virtio_slots() {
    let disks = "{ path = \"/d\" }, ".repeat(6);
    let nic = "{ network = \"lan\" }, ";
    let diags = errors(&format!(
        "[network.lan]\naddress = \"10.88.0.1/24\"\n[guest.g]\nkernel = \"/k\"\n\
         disks = [{disks}]\nnics = [{}]\n",
        nic.repeat(3)
    ));
    let col = "nics = [".len() + 2 * nic.len() + 1;
    assert_error_at(&diags, 6, col, &["`nics` in [guest.g]", "9", "at most 8"]);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
}

#[test]
fn start_limit_needs_both_fields() {
    let diags = errors(&format!("{MINIMAL_ZONE}start_limit = {{ burst = 3 }}\n"));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    assert_error_at(&diags, 4, 15, &["`start_limit` in [zone.a]", "interval"]);
}

#[test]
fn host_values_are_validated() {
    let diags = errors(concat!(
        "[host]\n",
        "log_level = \"verbose\"\n",                   // 2
        "syslog = \"udp://logs.example:514\"\n",       // 3
        "control_socket = \"control.sock\"\n",         // 4
        "ctrl_alt_del = \"halt\"\n",                   // 5
        "hostname = \"-edge\"\n",                      // 6
        "modules = [\"kvm amd\"]\n",                   // 7
        "sysctl = { \"../../etc/passwd\" = \"x\" }\n", // 8
    ));
    assert_error_at(
        &diags,
        2,
        13,
        &["`log_level`", "error, warn, info, debug, trace"],
    );
    assert_error_at(&diags, 3, 10, &["`syslog`", "IP address"]);
    assert_error_at(&diags, 4, 18, &["`control_socket`", "absolute"]);
    assert_error_at(
        &diags,
        5,
        16,
        &["`ctrl_alt_del`", "reboot, poweroff, ignore"],
    );
    assert_error_at(&diags, 6, 12, &["`hostname`"]);
    assert_error_at(&diags, 7, 12, &["`modules`"]);
    assert_error_at(&diags, 8, 33, &["`sysctl`", "net.ipv4.ip_forward"]);
    assert_eq!(diags.len(), 7, "{}", render(&diags));
}

#[test]
fn metrics_takes_a_socket_address_or_a_unix_path_and_nothing_else() {
    let config = ok("[host]\nmetrics = \"127.0.0.1:9321\"\n");
    let addr: SocketAddr = "127.0.0.1:9321".parse().unwrap();
    assert_eq!(config.host.metrics, Some(MetricsAddr::Tcp(addr)));
    let config = ok("[host]\nmetrics = \"unix:/run/zonit/metrics.sock\"\n");
    assert_eq!(
        config.host.metrics,
        Some(MetricsAddr::Unix("/run/zonit/metrics.sock".into()))
    );
    assert_eq!(
        ok("").host.metrics,
        None,
        "nothing listens unless configured"
    );
    for bad in [
        "localhost:9321",
        "127.0.0.1:0",
        "unix:relative.sock",
        "9321",
    ] {
        let diags = errors(&format!("[host]\nmetrics = \"{bad}\"\n"));
        assert_error_at(&diags, 2, 11, &["`metrics`", "IP:PORT or unix:/PATH"]);
    }
}

#[test]
fn syslog_accepts_tcp_and_ipv6_literals() {
    let config = ok("[host]\nsyslog = \"tcp://[2001:db8::1]:6514\"\n");
    let addr: SocketAddr = "[2001:db8::1]:6514".parse().unwrap();
    assert_eq!(config.host.syslog, Some(SyslogTarget::Tcp(addr)));
}

#[test]
fn sizes_accept_plain_bytes_and_iec_spellings() {
    let config = ok(&format!(
        "{MINIMAL_ZONE}memory_max = 1048576\n[guest.g]\nkernel = \"/k\"\nmemory = \"1GiB\"\n"
    ));
    assert_eq!(zone(&config, "a").memory_max, Some(1 << 20));
    assert_eq!(guest(&config, "g").memory, 1 << 30);
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes; the unknown key after it is at character column 14.
    let diags = errors("[host]\nhostname = \"é\"; x = 1\n");
    assert!(diags.iter().all(|d| d.line == 2), "{}", render(&diags));
    let diags =
        errors("[zone.a]\nenv = { \"é\" = \"1\", b = 2 }\nroot = \"/r\"\ncommand = [\"/x\"]\n");
    assert_error_at(&diags, 2, 24, &["`env.b`", "string"]);
}

#[test]
fn load_reports_an_unreadable_file_at_1_1() {
    let diags = load(Path::new("/nonexistent/zonit.toml")).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!((diags[0].line, diags[0].col), (1, 1));
    assert!(diags[0].message.contains("unable to read config"));
}

#[test]
fn type_errors_speak_toml_not_rust() {
    let diags = errors(concat!(
        "[guest.g]\nkernel = \"/k\"\n",
        "backoff = \"fast\"\n",            // 3
        "vcpus = 99999999999999999999\n",  // 4
        "disks = [{ readonly = true }]\n", // 5
        "memory = 1.5\n",                  // 6
        "after = \"x\"\n",                 // 7
    ));
    assert_error_at(
        &diags,
        3,
        11,
        &["invalid `backoff` in [guest.g]", "expected a table"],
    );
    assert_error_at(&diags, 4, 9, &["`vcpus`", "expected an integer"]);
    assert_error_at(&diags, 5, 10, &["`disks[0]`", "missing key `path`"]);
    assert_error_at(&diags, 6, 10, &["`memory`", "a size such as \"64M\""]);
    assert_error_at(&diags, 7, 9, &["`after`", "expected an array"]);
    assert_eq!(diags.len(), 5, "{}", render(&diags));
    for d in &diags {
        for rust in ["i64", "i128", "Raw", "struct", "sequence"] {
            assert!(!d.message.contains(rust), "{d}");
        }
    }
}

#[test]
fn example_in_the_config_reference_is_valid() {
    let doc = include_str!("../../docs/config.md");
    // Every TOML block of the reference parses; the last one is the
    // full example.
    let mut blocks = doc.split("```toml\n").skip(1).map(|b| {
        let len = b.find("```").unwrap();
        ok(&b[..len])
    });
    let mounts = blocks.next().unwrap();
    assert_eq!(mounts.host.mounts.len(), 1);
    let config = blocks.last().unwrap();
    assert_eq!(config.units.len(), 4);
    assert_eq!(
        zone(&config, "web").rlimits.get(&Resource::RLIMIT_NOFILE),
        Some(&1024)
    );
    assert_eq!(zone(&config, "web").ports.len(), 1);
}

const NETWORKED: &str = r#"[interface.eth0]
address = "dhcp"

[interface.eth1]
address = ["192.0.2.10/24", "2001:db8::10/64"]
gateway = "192.0.2.1"
mtu = 9000

[network.lan]
address = "10.88.0.1/24"
address6 = "fd88::1/64"
nat = true
dns = ["10.88.0.1"]
dhcp = true

[zone.web]
root = "/zones/web"
command = ["/bin/httpd"]
network = "lan"
address = "10.88.0.2"
ports = ["8080:80", "5353:53/udp"]

[zone.db]
root = "/zones/db"
command = ["/bin/db"]
network = "lan"

[zone.tool]
root = "/zones/tool"
command = ["/bin/tool"]
network = "host"

[guest.router]
kernel = "/guests/vmlinuz"
nics = [{ network = "lan", mac = "52:54:00:00:00:09", address = "10.88.0.9" }, { network = "lan" }]
ports = ["2222:22"]
"#;

#[test]
fn networking_keys_parse_into_interfaces_networks_and_nics() {
    let config = ok(NETWORKED);
    assert_eq!(config.interfaces.len(), 2);
    assert_eq!(config.interfaces[0].address, InterfaceAddress::Dhcp);
    let eth1 = &config.interfaces[1];
    match &eth1.address {
        InterfaceAddress::Static(list) => {
            let shown: Vec<String> = list.iter().map(|c| c.to_string()).collect();
            assert_eq!(shown, ["192.0.2.10/24", "2001:db8::10/64"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(eth1.gateway, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(eth1.mtu, Some(9000));
    let lan = config.network("lan").unwrap();
    assert_eq!(lan.bridge, "zn-lan");
    assert!(lan.nat && lan.dhcp);
    assert_eq!(lan.dns, ["10.88.0.1".parse::<std::net::IpAddr>().unwrap()]);

    let web = zone(&config, "web");
    let Network::Bridged(nic) = &web.network else {
        panic!("{:?}", web.network)
    };
    assert_eq!(nic.address, Some("10.88.0.2".parse().unwrap()));
    assert_eq!(nic.address6, Some("fd88::2".parse().unwrap()));
    assert_eq!(nic.mac, network::derive_mac("web", 0));
    assert_eq!(
        web.ports,
        [
            PortForward {
                proto: Proto::Tcp,
                host_port: 8080,
                port: 80
            },
            PortForward {
                proto: Proto::Udp,
                host_port: 5353,
                port: 53
            }
        ]
    );
    let db = zone(&config, "db");
    let Network::Bridged(db_nic) = &db.network else {
        panic!("{:?}", db.network)
    };
    let db_ip = db_nic.address.unwrap();
    assert!(lan.address.contains(db_ip.into()));
    assert!(
        ![
            nic.address.unwrap(),
            "10.88.0.1".parse().unwrap(),
            "10.88.0.9".parse().unwrap()
        ]
        .contains(&db_ip)
    );
    assert_eq!(zone(&config, "tool").network, Network::Host);

    let router = guest(&config, "router");
    assert_eq!(router.nics.len(), 2);
    assert_eq!(
        network::format_mac(&router.nics[0].mac),
        "52:54:00:00:00:09"
    );
    assert_eq!(router.nics[0].address, Some("10.88.0.9".parse().unwrap()));
    assert_eq!(router.nics[1].address, None);
    assert_eq!(router.nics[1].mac, network::derive_mac("router", 1));
    assert_ne!(router.nics[0].host_ifname, router.nics[1].host_ifname);
    assert_eq!(router.ports.len(), 1);
}

#[test]
fn a_derived_zone_address_does_not_depend_on_file_order_or_on_other_zones() {
    let alone = ok(
        "[network.lan]\naddress = \"10.88.0.1/24\"\n[zone.db]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\n",
    );
    let Network::Bridged(nic) = &zone(&alone, "db").network else {
        panic!()
    };
    let derived = nic.address.unwrap();
    // The same zone after others, one of them holding that very address
    // explicitly: db moves off it, and back when it is free.
    let crowded = format!(
        "[network.lan]\naddress = \"10.88.0.1/24\"\n[zone.x]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\naddress = \"{derived}\"\n[zone.db]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\n[zone.y]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\n"
    );
    let config = ok(&crowded);
    let Network::Bridged(nic) = &zone(&config, "db").network else {
        panic!()
    };
    assert_ne!(nic.address.unwrap(), derived);
    let reordered = "[zone.y]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\n[zone.db]\nroot = \"/z\"\ncommand = [\"/x\"]\nnetwork = \"lan\"\n[network.lan]\naddress = \"10.88.0.1/24\"\n";
    let (a, b) = (
        ok(reordered),
        ok(&crowded.replace(&format!("address = \"{derived}\"\n"), "")),
    );
    assert_eq!(zone(&a, "db").network, zone(&b, "db").network);
    assert_eq!(zone(&a, "y").network, zone(&b, "y").network);
}

#[test]
fn networking_mistakes_are_each_reported_at_their_value() {
    let diags = errors(
        r#"[interface.a-name-of-16-byt]
address = "192.0.2.10"
[network.lan]
address = "10.88.0.1/24"
[network.other]
address = "10.88.0.129/25"
[network.empty]
nat = true
[zone.a]
root = "/z"
command = ["/x"]
network = "lan"
address = "10.89.0.2"
ports = ["99999"]
[zone.b]
root = "/z"
command = ["/x"]
network = "lam"
[zone.c]
root = "/z"
command = ["/x"]
ports = ["80:80"]
address = "10.88.0.3"
[zone.d]
root = "/z"
command = ["/x"]
network = "lan"
address = "10.88.0.4"
ports = ["8080:80"]
[zone.e]
root = "/z"
command = ["/x"]
network = "lan"
address = "10.88.0.4"
ports = ["8080:8080"]
[guest.g]
kernel = "/k"
nics = [{ network = "lan" }]
ports = ["2222:22"]
"#,
    );
    assert_error_at(&diags, 1, 12, &["interface name", "15 bytes"]);
    assert_error_at(&diags, 2, 11, &["`address`", "\"192.0.2.10\""]);
    assert_error_at(&diags, 6, 11, &["overlaps", "[network.lan]"]);
    assert_error_at(&diags, 7, 10, &["no `address`"]);
    assert_error_at(
        &diags,
        13,
        11,
        &["10.89.0.2", "outside the subnet 10.88.0.0/24"],
    );
    assert_error_at(&diags, 14, 10, &["\"99999\""]);
    assert_error_at(&diags, 18, 11, &["`lam`", "did you mean `lan`?"]);
    assert_error_at(
        &diags,
        22,
        10,
        &["`ports`", "needs the zone on a [network.X]"],
    );
    assert_error_at(
        &diags,
        23,
        11,
        &["`address`", "needs the zone on a [network.X]"],
    );
    assert_error_at(&diags, 34, 11, &["10.88.0.4", "already `d`'s"]);
    assert_error_at(&diags, 35, 10, &["8080/tcp", "already forwarded to `d`"]);
    assert_error_at(&diags, 39, 10, &["`ports`", "needs an address"]);
    assert_eq!(diags.len(), 12, "{}", render(&diags));
}

#[test]
fn a_network_default_is_checked_per_zone_and_reported_once() {
    let diags = errors(
        "[defaults]\nnetwork = \"nope\"\n[zone.a]\nroot = \"/z\"\ncommand = [\"/x\"]\n[zone.b]\nroot = \"/z\"\ncommand = [\"/x\"]\n",
    );
    assert_error_at(&diags, 2, 11, &["`nope`", "\"none\", \"host\""]);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
}

#[test]
fn a_control_socket_path_longer_than_a_unix_socket_holds_is_rejected() {
    let long = format!("/run/{}.sock", "s".repeat(100));
    let diags = errors(&format!("[host]\ncontrol_socket = \"{long}\"\n"));
    assert_error_at(&diags, 2, 18, &["control_socket", "at most 107"]);
    // 107 bytes exactly is the longest that binds.
    let fits = format!("/{}", "s".repeat(106));
    ok(&format!("[host]\ncontrol_socket = \"{fits}\"\n"));
}

#[test]
fn argv_and_env_strings_over_the_kernels_limit_are_rejected() {
    let huge = "x".repeat(128 * 1024);
    let diags = errors(&format!(
        "[zone.a]\nroot = \"/z\"\ncommand = [\"/bin/a\", \"{huge}\"]\nenv = {{ BIG = \"{huge}\" }}\n"
    ));
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert_error_at(&diags, 3, 22, &["command", "execve(2) takes at most"]);
    assert_error_at(&diags, 4, 15, &["env", "execve(2) takes at most"]);
    // One byte under the limit with its NUL is fine.
    let fits = "x".repeat(128 * 1024 - 1);
    ok(&format!(
        "[zone.a]\nroot = \"/z\"\ncommand = [\"/bin/a\", \"{fits}\"]\n"
    ));
}

#[test]
fn stop_signals_that_pause_or_resume_are_rejected() {
    for sig in ["STOP", "SIGCONT", "TSTP", "SIGSTOP"] {
        let diags = errors(&format!("{MINIMAL_ZONE}stop_signal = \"{sig}\"\n"));
        assert_error_at(&diags, 4, 15, &["stop_signal", "instead of ending it"]);
    }
    let diags = errors(&format!(
        "[defaults]\nstop_signal = \"STOP\"\n{MINIMAL_ZONE}"
    ));
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    ok(&format!("{MINIMAL_ZONE}stop_signal = \"SIGQUIT\"\n"));
}

#[test]
fn host_mounts_parse_with_their_defaults() {
    let config = ok(concat!(
        "[[host.mounts]]\n",
        "source = \"LABEL=zdata\"\n",
        "target = \"/data\"\n",
        "fs = \"ext4\"\n",
        "options = [\"noatime\", \"errors=remount-ro\"]\n",
        "[[host.mounts]]\n",
        "source = \"UUID=0A1B-2C3D\"\n",
        "target = \"/data/boot/\"\n",
        "fs = \"vfat\"\n",
        "wait = \"2s\"\n",
        "required = false\n",
        "[[host.mounts]]\n",
        "source = \"PARTLABEL=zimages\"\n",
        "target = \"/guests\"\n",
        "fs = \"xfs\"\n",
        "[[host.mounts]]\n",
        "source = \"/dev/vdc\"\n",
        "target = \"/srv\"\n",
        "fs = \"btrfs\"\n",
        "[[host.mounts]]\n",
        "target = \"/scratch\"\n",
        "fs = \"tmpfs\"\n",
        "options = [\"size=64M\"]\n",
    ));
    let m = &config.host.mounts;
    assert_eq!(m.len(), 5);
    assert_eq!(
        m[0],
        HostMount {
            source: MountSource::Label("zdata".into()),
            target: "/data".into(),
            fs: "ext4".into(),
            options: vec!["noatime".into(), "errors=remount-ro".into()],
            wait: Duration::from_secs(10),
            required: true,
        }
    );
    assert_eq!(m[1].source, MountSource::Uuid("0A1B-2C3D".into()));
    // A trailing slash is not part of the mount point.
    assert_eq!(m[1].target, PathBuf::from("/data/boot"));
    assert_eq!(m[1].wait, Duration::from_secs(2));
    assert!(!m[1].required);
    assert_eq!(m[2].source, MountSource::PartLabel("zimages".into()));
    assert_eq!(m[3].source, MountSource::Device("/dev/vdc".into()));
    // A tmpfs needs no device; its source is a name.
    assert_eq!(m[4].source, MountSource::Name("tmpfs".into()));
    assert!(!m[4].source.needs_device());
    assert_eq!(m[0].source.to_string(), "LABEL=zdata");
}

#[test]
fn host_mount_mistakes_are_reported_where_they_are_written() {
    let diags = errors(concat!(
        "[[host.mounts]]\n",               // 1
        "source = \"NAME=x\"\n",           // 2
        "target = \"data\"\n",             // 3
        "fs = \"Ext4\"\n",                 // 4
        "[[host.mounts]]\n",               // 5
        "source = \"UUID=not-a-uuid!\"\n", // 6
        "target = \"/proc/data\"\n",       // 7
        "fs = \"ext4\"\n",                 // 8
        "options = [\"noatime,nodev\"]\n", // 9
        "wait = \"10\"\n",                 // 10
        "[[host.mounts]]\n",               // 11
        "source = \"LABEL=a\"\n",          // 12
        "target = \"/\"\n",                // 13
        "fs = \"ext4\"\n",                 // 14
        "wait = \"1h\"\n",                 // 15
        "[[host.mounts]]\n",               // 16
        "source = \"LABEL=b\"\n",          // 17
        "target = \"/data\"\n",            // 18
        "[[host.mounts]]\n",               // 19
        "source = \"LABEL=c\"\n",          // 20
        "target = \"/data\"\n",            // 21
        "fs = \"xfs\"\n",                  // 22
        "[[host.mounts]]\n",               // 23
        "source = \"LABEL=d\"\n",          // 24
        "target = \"/d2\"\n",              // 25
        "fs = \"xfs\"\n",                  // 26
        "label = \"x\"\n",                 // 27
        "[[host.mounts]]\n",               // 28
        "source = \"data.img\"\n",         // 29
        "target = \"/e\"\n",               // 30
        "fs = \"ext4\"\n",                 // 31
        "[[host.mounts]]\n",               // 32
        "source = \"LABEL=f\"\n",          // 33
        "target = \"/srv/../data\"\n",     // 34
        "fs = \"ext4\"\n",                 // 35
    ));
    assert_error_at(
        &diags,
        2,
        10,
        &["`mounts[0].source`", "LABEL=, UUID=, PARTLABEL="],
    );
    assert_error_at(&diags, 3, 10, &["`mounts[0].target`", "absolute"]);
    assert_error_at(&diags, 4, 6, &["`mounts[0].fs`", "\"ext4\""]);
    assert_error_at(&diags, 6, 10, &["`mounts[1].source`", "not a UUID"]);
    assert_error_at(
        &diags,
        7,
        10,
        &["`mounts[1].target`", "/proc is set up by zonit"],
    );
    assert_error_at(&diags, 9, 12, &["`mounts[1].options`", "one mount option"]);
    assert_error_at(&diags, 10, 8, &["`mounts[1].wait`", "no unit"]);
    assert_error_at(&diags, 13, 10, &["`mounts[2].target`", "root cannot"]);
    assert_error_at(&diags, 15, 8, &["`mounts[2].wait`", "at most 600s"]);
    assert_error_at(&diags, 16, 1, &["`mounts[3]`", "`fs` is missing"]);
    assert_error_at(&diags, 21, 10, &["`mounts[4].target`", "earlier mount"]);
    assert_error_at(&diags, 27, 1, &["unknown key `label`", "mounts[5]"]);
    assert_error_at(
        &diags,
        29,
        10,
        &["`mounts[6].source`", "device path under /dev"],
    );
    assert_error_at(&diags, 34, 10, &["`mounts[7].target`", "`..`"]);
    assert_eq!(diags.len(), 14, "{}", render(&diags));
}

#[test]
fn guest_cgroup_limits_are_the_guests_own() {
    let config = ok(concat!(
        "[guest.a]\nkernel = \"/k\"\nmemory = \"256M\"\n",
        "[guest.b]\nkernel = \"/k\"\nvcpus = 2\nmemory_max = \"300M\"\ncpu_max = 1.5\npids_max = 3\n",
        "[defaults]\nmemory_max = \"8M\"\n",
    ));
    // [defaults] memory_max is a zone default: it never caps a guest.
    assert_eq!(guest(&config, "a").cgroup_limits(), CgroupLimits::default());
    let b = guest(&config, "b");
    assert_eq!(
        b.cgroup_limits(),
        CgroupLimits {
            memory_max: Some(300 << 20),
            cpu_max: Some(1.5),
            pids_max: Some(3),
        }
    );
}

#[test]
fn guest_cgroup_limits_are_validated() {
    let diags = errors(concat!(
        "[guest.a]\n",
        "kernel = \"/k\"\n",
        "vcpus = 2\n",
        "pids_max = 2\n",   // 4
        "memory_max = 0\n", // 5
        "cpu_max = -1.0\n", // 6
    ));
    assert_error_at(
        &diags,
        4,
        12,
        &["`pids_max` in [guest.a]", "one per vCPU (2)"],
    );
    assert_error_at(&diags, 5, 14, &["`memory_max` in [guest.a]", "above zero"]);
    assert_error_at(&diags, 6, 11, &["`cpu_max` in [guest.a]", "positive"]);
    assert_eq!(diags.len(), 3, "{}", render(&diags));
}

#[test]
fn a_fifo_at_the_config_path_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zonit.toml");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Without a writer, a blocking open would never return.
    let errs = load(&path).unwrap_err();
    assert!(errs[0].message.contains("a FIFO"), "{}", errs[0]);
}

#[test]
fn a_config_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zonit.toml");
    let mut text = "# padding\n".repeat((MAX_SIZE as usize) / 10);
    text.push_str("\n# one line too many\n");
    std::fs::write(&path, text).unwrap();
    let errs = load(&path).unwrap_err();
    assert!(errs[0].message.contains("more than the"), "{}", errs[0]);
    std::fs::write(&path, "").unwrap();
    assert!(load(&path).is_ok());
}

#[test]
fn a_mac_given_to_two_interfaces_is_an_error_at_the_second_unit() {
    let diags = errors(
        "[network.lan]\naddress = \"10.88.0.1/24\"\n[guest.a]\nkernel = \"/k\"\nnics = [{ network = \"lan\", mac = \"52:54:00:00:00:01\" }]\n[guest.b]\nkernel = \"/k\"\nnics = [{ network = \"lan\", mac = \"52:54:00:00:00:01\" }]\n",
    );
    assert_error_at(&diags, 6, 8, &["MAC 52:54:00:00:00:01", "already `a`'s"]);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
}

/// For each key a unit shares with `[defaults]`: a value for `[defaults]`
/// and a different one for the unit.
const SHARED_KEY_SAMPLES: &[(&str, &str, &str)] = &[
    ("restart", r#""never""#, r#""always""#),
    ("backoff", r#"{ initial = "1s" }"#, r#"{ initial = "2s" }"#),
    (
        "start_limit",
        r#"{ burst = 1, interval = "1s" }"#,
        r#"{ burst = 2, interval = "1s" }"#,
    ),
    ("stop_timeout", r#""1s""#, r#""2s""#),
    ("autostart", "false", "true"),
    ("env", r#"{ A = "1" }"#, r#"{ A = "2" }"#),
    ("user", r#""1:1""#, r#""2:2""#),
    ("capabilities", r#"["CAP_KILL"]"#, r#"["CAP_CHOWN"]"#),
    ("network", r#""host""#, r#""n""#),
    ("memory_max", r#""64M""#, r#""128M""#),
    ("cpu_max", "1", "2"),
    ("pids_max", "10", "20"),
    ("rlimits", "{ nofile = 10 }", "{ nofile = 20 }"),
    ("stop_signal", r#""INT""#, r#""QUIT""#),
    ("ready", "{ tcp = 1 }", "{ tcp = 2 }"),
    ("health", "{ tcp = 1 }", "{ tcp = 2 }"),
    ("memory", r#""256M""#, r#""512M""#),
    ("vcpus", "2", "3"),
    ("cmdline", r#""console=ttyS0 a""#, r#""console=ttyS0 b""#),
    ("on_reboot", r#""stop""#, r#""restart""#),
];

#[test]
fn every_key_shared_with_defaults_reaches_units_without_it_and_units_win() {
    use super::raw::{RawCommon, RawGuestShared, RawZoneShared, fields_of};
    let zone_keys = [fields_of::<RawCommon>(), fields_of::<RawZoneShared>()].concat();
    let guest_keys = fields_of::<RawGuestShared>();
    for key in zone_keys.iter().chain(guest_keys) {
        let Some(&(_, default, own)) = SHARED_KEY_SAMPLES.iter().find(|(k, ..)| k == key) else {
            panic!("`{key}` has no sample values in SHARED_KEY_SAMPLES: add them");
        };
        let unit = if zone_keys.contains(key) {
            |name: &str, extra: &str| {
                format!("[zone.{name}]\nroot = \"/r\"\ncommand = [\"/x\"]\n{extra}\n")
            }
        } else {
            |name: &str, extra: &str| format!("[guest.{name}]\nkernel = \"/k\"\n{extra}\n")
        };
        let network = "[network.n]\naddress = \"10.0.0.1/24\"\n";
        let set = |value: &str| format!("{key} = {value}");
        // [defaults] sets it; `a` does not, `b` does.
        let merged = ok(&format!(
            "{network}[defaults]\n{}\n{}{}",
            set(default),
            unit("a", ""),
            unit("b", &set(own))
        ));
        // The same values, each written in the unit itself.
        let written = ok(&format!(
            "{network}{}{}",
            unit("a", &set(default)),
            unit("b", &set(own))
        ));
        let bare = ok(&format!("{network}{}", unit("a", "")));
        let show = |c: &Config, name: &str| format!("{:?}", c.unit(name).unwrap());
        assert_eq!(
            show(&merged, "a"),
            show(&written, "a"),
            "`{key}` from [defaults]"
        );
        assert_ne!(
            show(&merged, "a"),
            show(&bare, "a"),
            "`{key}` has no effect"
        );
        assert_eq!(
            show(&merged, "b"),
            show(&written, "b"),
            "`{key}` of the unit"
        );
    }
}
