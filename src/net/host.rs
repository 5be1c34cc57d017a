//! What the agent keeps of the host's networking while it runs: the host
//! plan it applied (bridges, routing, the `zonit` table), each bridged
//! zone's incarnation counter, and the directory of generated
//! `resolv.conf` and `hosts` files.
//!
//! Owns: applying `plan::HostPlan` at start and at every reload (bridges
//! created or adopted, the table replaced in one batch, bridges of
//! networks that left the config deleted), removing all of it at exit,
//! and a zone's part of a start (its veth and in-zone configuration)
//! before the zone's command is released.
//!
//! Invariants: a config without `[network.X]` touches neither links nor
//! nf_tables (a host whose kernel lacks them runs as before); nothing here
//! deletes a zone's veth (the kernel does, with the zone's namespace).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::netlink::{self, Rtnl};
use super::nft;
use super::plan::{self, HostPlan};
use crate::config::{BindMount, Config, Network, Zone};

/// The agent's networking state.
#[derive(Debug, Default)]
pub struct HostNet {
    /// What was applied last (`None`: nothing, or nothing to apply).
    applied: Option<HostPlan>,
    /// Starts of each bridged zone so far; picks its host link's name.
    incarnations: HashMap<String, u32>,
    /// Where `resolv.conf` and `hosts` of zones are written.
    files: PathBuf,
}

impl HostNet {
    /// Networking whose generated files go below `files`.
    pub fn new(files: PathBuf) -> HostNet {
        HostNet {
            files,
            ..HostNet::default()
        }
    }

    /// Brings the host in line with `config`'s networks; every failure is
    /// logged with what to do, and the rest is still attempted.
    pub fn apply(&mut self, config: &Config) {
        self.interfaces(config);
        let plan = plan::host_plan(config);
        if plan.bridges.is_empty() && self.applied.is_none() {
            return;
        }
        let mut rtnl = match Rtnl::new() {
            Ok(r) => r,
            Err(e) => {
                log::error!("networking: {e}; zones on a [network.X] will not start");
                return;
            }
        };
        if let Err(e) = netlink::set_up_bridges(&mut rtnl, &plan.bridges) {
            log::error!("networking: {e}");
        }
        if let Err(e) = netlink::enable_forwarding(plan.forward_v4, plan.forward_v6) {
            log::error!(
                "networking: unable to turn on IP forwarding: {e}; zones reach only their bridge"
            );
        }
        if let Some(old) = &self.applied {
            for gone in old
                .bridges
                .iter()
                .filter(|b| !plan.bridges.iter().any(|n| n.name == b.name))
            {
                if let Err(e) = rtnl.delete_link(&gone.name) {
                    log::warn!("networking: {e}");
                }
            }
        }
        let batch = if plan.bridges.is_empty() {
            nft::delete_table(1)
        } else {
            nft::replace_table(&plan.ruleset, 1)
        };
        if let Err(e) = nft::apply(batch) {
            log::error!(
                "networking: unable to replace nf_tables table inet {}: {e}; port forwards and NAT are not in place (the kernel needs nf_tables with nat, masq, fib and ct)",
                plan::TABLE
            );
        }
        self.applied = (!plan.bridges.is_empty()).then_some(plan);
        self.refresh_files(config);
    }

    /// Rewrites the files of zones that have them, in place: a running
    /// zone's bind mount holds the file, so it sees the units a reload
    /// added or removed without a restart.
    fn refresh_files(&self, config: &Config) {
        for unit in &config.units {
            let crate::config::UnitKind::Zone(zone) = &unit.kind else {
                continue;
            };
            if self.files.join(&unit.name).is_dir()
                && let Err(e) = self.zone_files(config, &unit.name, zone)
            {
                log::warn!("{}: {e}", unit.name);
            }
        }
    }

    /// Configures the host NICs the config names (`[interface.X]`).
    fn interfaces(&self, config: &Config) {
        if config.interfaces.is_empty() {
            return;
        }
        let mut rtnl = match Rtnl::new() {
            Ok(r) => r,
            Err(e) => {
                log::error!("networking: {e}");
                return;
            }
        };
        for iface in &config.interfaces {
            if let Err(e) = netlink::set_up_interface(&mut rtnl, iface) {
                log::error!("interface {}: {e}", iface.name);
            }
        }
    }

    /// Removes what [`HostNet::apply`] made: the table and the bridges.
    pub fn teardown(&mut self) {
        let Some(plan) = self.applied.take() else {
            return;
        };
        if let Err(e) = nft::apply(nft::delete_table(1)) {
            log::warn!(
                "networking: unable to delete table inet {}: {e}",
                plan::TABLE
            );
        }
        match Rtnl::new() {
            Ok(mut rtnl) => {
                for bridge in &plan.bridges {
                    if let Err(e) = rtnl.delete_link(&bridge.name) {
                        log::warn!("networking: {e}");
                    }
                }
            }
            Err(e) => log::warn!("networking: {e}"),
        }
    }

    /// The read-only bind mounts of `/etc/resolv.conf` and `/etc/hosts`
    /// for zone `unit`, after writing the files; none for a zone that is
    /// not on a network.
    pub fn zone_files(
        &self,
        config: &Config,
        unit: &str,
        zone: &Zone,
    ) -> Result<Vec<BindMount>, String> {
        let Network::Bridged(nic) = &zone.network else {
            return Ok(Vec::new());
        };
        let Some(net) = config.network(&nic.network) else {
            return Err(format!("network {} is not in the config", nic.network));
        };
        let dir = self.files.join(unit);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("unable to create {}: {e}", dir.display()))?;
        let mut mounts = Vec::new();
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
        let files = [
            (
                "resolv.conf",
                plan::resolv_conf(net, host_resolv.as_deref()),
            ),
            ("hosts", Some(plan::hosts(config, unit, &zone.hostname))),
        ];
        for (name, text) in files {
            let Some(text) = text else {
                log::info!(
                    "{unit}: no nameserver to give (the host's are all loopback); set `dns` on [network.{}]",
                    net.name
                );
                continue;
            };
            let path = dir.join(name);
            write_file(&path, &text)?;
            mounts.push(BindMount {
                source: path,
                target: Path::new("/etc").join(name),
                readonly: true,
            });
        }
        Ok(mounts)
    }

    /// A bridged zone's network, set up from outside once its init exists
    /// (`init`, its pidfd): the veth into its namespace, addresses and
    /// routes inside.
    pub fn zone_start(
        &mut self,
        config: &Config,
        unit: &str,
        init: BorrowedFd<'_>,
    ) -> Result<(), String> {
        if plan::zone_plan_of(config, unit, 0).is_none() {
            return Ok(()); // not on a [network.X]
        }
        let place = format!("zone {unit}");
        let netns = netlink::netns_of(init, &place).map_err(|e| e.to_string())?;
        let mut rtnl = Rtnl::new().map_err(|e| e.to_string())?;
        // A host end still there (a zone of a killed agent that lives on)
        // makes the next name the one to use.
        let mut tries = 0;
        loop {
            let n = self.incarnations.entry(unit.to_string()).or_insert(0);
            let incarnation = *n;
            *n = n.wrapping_add(1);
            let Some((zplan, _)) = plan::zone_plan_of(config, unit, incarnation) else {
                return Ok(());
            };
            match netlink::set_up_zone(&mut rtnl, &zplan, netns.as_fd(), unit) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_link_exists() && tries + 1 < plan::INCARNATIONS => {
                    log::info!("{unit}: {e}; trying the next name");
                    tries += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "{e}; check that bridge {} exists (see the log at start)",
                        zplan.bridge
                    ));
                }
            }
        }
    }

    /// The addresses of a unit, for `status`.
    pub fn addresses(config: &Config, unit: &str) -> Vec<String> {
        config
            .unit(unit)
            .map(|u| {
                u.nics()
                    .iter()
                    .flat_map(|n| {
                        n.address
                            .map(|a| a.to_string())
                            .into_iter()
                            .chain(n.address6.map(|a| a.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Writes `text` to `path` in place: a file that already says `text` is
/// left alone, any other is overwritten from its start and then cut to
/// length. Never truncated to zero first: freeing a file's blocks is a
/// synchronous discard on a file system mounted with `discard` (tens of
/// milliseconds of the agent's loop per file, at every zone start), and a
/// running zone's bind mount holds this inode, so the file must stay the
/// same one.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let failed = |e: std::io::Error| format!("unable to write {}: {e}", path.display());
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.set_len(text.len() as u64).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::write_file;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_zone_file_with_the_same_text_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write_file(&path, "127.0.0.1 localhost\n").unwrap();
        let before = std::fs::metadata(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_file(&path, "127.0.0.1 localhost\n").unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (before.mtime(), before.mtime_nsec()),
            (after.mtime(), after.mtime_nsec())
        );
    }

    #[test]
    fn a_zone_file_is_rewritten_in_place_and_cut_to_its_new_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write_file(&path, "a long first version of the file\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_file(&path, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        write_file(&path, "longer than short\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "longer than short\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }
}
