//! Which container a process runs in, from its cgroup membership (OpenTelemetry's
//! `container.id`), and which Kubernetes pod (`k8s.pod.uid`).
//!
//! The cgroup path is where every container runtime records a container's identity: the
//! runtime names the cgroup after the container id when it creates the container, the kernel
//! shows it in `/proc/<pid>/cgroup` to anyone who can read that file, and it stays put for the
//! process's life. Reading it needs no runtime socket, no namespace switch and no knowledge of
//! the process's filesystem, which is why node agents (kubelet's cAdvisor, OpenTelemetry
//! collectors) use it too. The id found is the one the runtime reports, so it joins with a pod's
//! `status.containerStatuses[].containerID` (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`).
//!
//! A container cgroup is recognised by one path component, whatever sits above it:
//! - `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`: the systemd cgroup
//!   driver (containerd, CRI-O, Docker or dockershim).
//! - `crio-<id>`: CRI-O with the cgroupfs driver.
//! - `<slice>:cri-containerd:<id>` (also `:crio:`, `:docker:`): runc's systemd cgroup name
//!   (`slice:prefix:name`), seen as a literal directory name in some v1 hierarchies, typically
//!   under `/system.slice/containerd.service/` (kubernetes/kubernetes#106514).
//! - `<id>` bare, directly under a pod cgroup (`/kubepods/[<qos>/]pod<uid>/<id>`: containerd,
//!   or dockershim, with the cgroupfs driver) or under `docker` (`/docker/<id>`: Docker with the
//!   cgroupfs driver).
//!
//! An `<id>` is 64 lowercase hex digits, exactly as runtimes write it. Components are searched
//! from the innermost out, so a cgroup nested inside a container (systemd running in a container
//! makes `.../cri-containerd-<id>.scope/init.scope`) belongs to that container, and a container
//! nested inside another (kind nodes, Docker in Docker: `/docker/<node>/kubepods/.../<id>`) is
//! reported as the inner one, the one the process's own runtime knows about.
//!
//! A cgroup v2 (`0::<path>`) line is preferred: it is the only hierarchy on v2 hosts and agrees
//! with the v1 lines on systemd-driver hybrid hosts. On hybrid hosts with the cgroupfs driver it
//! names only a service (`0::/system.slice/containerd.service`) or the root, so the v1 lines are
//! then consulted, the deepest one that names a container first: controllers a nested runtime
//! was not delegated stop at the outer container.
//!
//! Deliberately not matched, because the path does not name a container id this module can
//! stand behind: podman (`libpod-<id>.scope`, no [`Runtime`] for it), LXC/LXD and
//! systemd-nspawn (named, not id'd), containerd clients outside Kubernetes (nerdctl, `ctr`:
//! namespace-named parents such as `/default/<id>`), Amazon ECS (`/ecs/<task>/<id>`), bare
//! hex components under any other parent (a hex name alone is not evidence of a container),
//! uppercase or wrong-length ids, and CRI-O's `crio-conmon-<id>` cgroup, which holds the
//! container's monitor process, not the container.
//!
//! Paths relative to a cgroup namespace root (an agent running in a container with a private
//! cgroup namespace sees `0::/../../kubepods-burstable-pod<uid>.slice/...`) are matched the
//! same way; the hidden `kubepods` ancestor of a cgroupfs pod cgroup is taken on trust there.

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

/// A container's identity, as its runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerId {
    /// 64 lowercase hex digits.
    pub id: String,
    pub runtime: Runtime,
}

/// The container of a process, from the text of /proc/<pid>/cgroup (v1: many lines, v2:
/// "0::/path"; hybrid: both).
pub fn container_of(proc_cgroup: &str) -> Option<ContainerId> {
    from_preferred_line(proc_cgroup, container_in_path)
}

/// The container a single cgroup path names (the path part of one /proc/<pid>/cgroup line).
pub fn container_in_path(path: &str) -> Option<ContainerId> {
    let components = components_of(path);
    (0..components.len()).rev().find_map(|at| container_at(&components, at))
}

/// The Kubernetes pod UID a cgroup path names (`/kubepods/<qos>/pod<uid>` with the cgroupfs
/// driver, `kubepods-<qos>-pod<uid>.slice` with the systemd driver, whose underscores are turned
/// back into the UID's dashes), if any.
pub fn pod_uid_in_path(path: &str) -> Option<String> {
    let components = components_of(path);
    (0..components.len()).rev().find_map(|at| pod_uid_at(&components, at))
}

/// The Kubernetes pod UID of a process, from the text of /proc/<pid>/cgroup.
pub fn pod_uid_of(proc_cgroup: &str) -> Option<String> {
    from_preferred_line(proc_cgroup, pod_uid_in_path)
}

/// One line of /proc/<pid>/cgroup: `hierarchy-id:controllers:path`.
struct CgroupLine<'a> {
    hierarchy: &'a str,
    controllers: &'a str,
    path: &'a str,
}

impl<'a> CgroupLine<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        // At most three fields: the path itself may hold colons (runc's `slice:prefix:id`).
        let mut fields = line.trim().splitn(3, ':');
        let (hierarchy, controllers, path) = (fields.next()?, fields.next()?, fields.next()?.trim());
        let numbered = !hierarchy.is_empty() && hierarchy.bytes().all(|b| b.is_ascii_digit());
        (numbered && path.starts_with('/')).then_some(Self { hierarchy, controllers, path })
    }

    fn is_unified(&self) -> bool {
        self.hierarchy == "0" && self.controllers.is_empty()
    }

    fn depth(&self) -> usize {
        components_of(self.path).len()
    }
}

/// What `find` finds on the cgroup v2 line, else on the deepest v1 line where it finds anything
/// (the first of equally deep ones).
fn from_preferred_line<T>(proc_cgroup: &str, find: impl Fn(&str) -> Option<T>) -> Option<T> {
    let lines = || proc_cgroup.lines().filter_map(CgroupLine::parse);
    if let Some(found) = lines().filter(CgroupLine::is_unified).find_map(|line| find(line.path)) {
        return Some(found);
    }
    let mut deepest: Option<(usize, T)> = None;
    for line in lines().filter(|line| !line.is_unified()) {
        let depth = line.depth();
        if deepest.as_ref().is_some_and(|(best, _)| *best >= depth) {
            continue;
        }
        if let Some(found) = find(line.path) {
            deepest = Some((depth, found));
        }
    }
    deepest.map(|(_, found)| found)
}

fn components_of(path: &str) -> Vec<&str> {
    path.trim().split('/').filter(|component| !component.is_empty()).collect()
}

/// The container `components[at]` names, given the components above it.
fn container_at(components: &[&str], at: usize) -> Option<ContainerId> {
    let component = components[at];
    if let Some(found) = runc_systemd_name(component).or_else(|| prefixed_name(component)) {
        return Some(found);
    }
    if !is_container_id(component) {
        return None;
    }
    let parent = at.checked_sub(1).map(|above| components[above])?;
    let runtime = if parent == "docker" {
        Runtime::Docker
    } else if pod_uid_at(components, at - 1).is_some() {
        // containerd and dockershim (or cri-dockerd) both name a cgroupfs container cgroup by its
        // bare id: nothing in the path tells them apart. The id is right either way; containerd
        // is the likelier runtime, dockershim having left Kubernetes in 1.24 and containerd being
        // the default of kubeadm and the managed clusters since.
        Runtime::Containerd
    } else {
        return None;
    };
    Some(ContainerId { id: component.to_owned(), runtime })
}

/// `<runtime>-<id>` with an optional `.scope`: `cri-containerd-<id>.scope`, `crio-<id>`, ...
fn prefixed_name(component: &str) -> Option<ContainerId> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    // Splitting at the last dash leaves `crio-conmon` as the prefix of a conmon cgroup, which
    // names no runtime: conmon is not the container.
    let (prefix, id) = name.rsplit_once('-')?;
    identified(prefix, id)
}

/// runc's systemd cgroup name `<slice>:<runtime>:<id>`, taken literally as a directory name.
fn runc_systemd_name(component: &str) -> Option<ContainerId> {
    let mut fields = component.splitn(3, ':');
    let (_slice, prefix, id) = (fields.next()?, fields.next()?, fields.next()?);
    identified(prefix, id)
}

fn identified(runtime_prefix: &str, id: &str) -> Option<ContainerId> {
    let runtime = runtime_named(runtime_prefix)?;
    is_container_id(id).then(|| ContainerId { id: id.to_owned(), runtime })
}

/// The runtime a cgroup name prefix stands for.
fn runtime_named(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        _ => None,
    }
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(is_lowercase_hex)
}

/// The pod UID `components[at]` names, given the components above it.
fn pod_uid_at(components: &[&str], at: usize) -> Option<String> {
    let component = components[at];
    if let Some(uid) = systemd_pod_slice(component) {
        return Some(uid);
    }
    let uid = component.strip_prefix("pod")?;
    let under_kubepods = components[..at].iter().any(|&above| above == "kubepods" || above == "..");
    (under_kubepods && is_pod_uid(uid)).then(|| uid.to_owned())
}

/// The UID in a systemd-driver pod slice, `kubepods-<qos>-pod<uid>.slice` (`kubepods-pod<uid>`
/// for guaranteed pods, `kubelet-kubepods-...` under kind), also as the slice part of runc's
/// `<slice>:<runtime>:<id>` name. systemd reads a dash in a slice name as a level of nesting, so
/// the kubelet writes the UID's dashes as underscores there.
fn systemd_pod_slice(component: &str) -> Option<String> {
    let slice = component.split(':').next()?.strip_suffix(".slice")?;
    let mut levels = slice.split('-');
    let pod = levels.next_back()?.strip_prefix("pod")?;
    if !levels.any(|level| level == "kubepods") {
        return None;
    }
    let uid = pod.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID in lowercase (API-created pods), or 32 lowercase hex digits: the kubelet gives a static
/// pod the hash of its manifest as UID.
fn is_pod_uid(text: &str) -> bool {
    let bytes = text.as_bytes();
    let is_uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(at, &b)| match at {
            8 | 13 | 18 | 23 => b == b'-',
            _ => is_lowercase_hex(b),
        });
    let is_manifest_hash = bytes.len() == 32 && bytes.iter().copied().all(is_lowercase_hex);
    is_uuid || is_manifest_hash
}

fn is_lowercase_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19";
    const OUTER_ID: &str = "d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22";
    const POD_UID: &str = "2fc932ce-fdcc-454b-97bd-aadfdeb4c340";
    const POD_SLICE_UID: &str = "2fc932ce_fdcc_454b_97bd_aadfdeb4c340";
    const STATIC_POD_UID: &str = "36b6d6be73b1065af369b3985edafa09";

    fn container(id: &str, runtime: Runtime) -> Option<ContainerId> {
        Some(ContainerId { id: id.to_owned(), runtime })
    }

    /// A cgroup v1 /proc/<pid>/cgroup as a container process shows it, every controller at `path`.
    fn v1_file(path: &str) -> String {
        let controllers = [
            "hugetlb",
            "cpuset",
            "devices",
            "memory",
            "freezer",
            "perf_event",
            "pids",
            "net_cls,net_prio",
            "blkio",
            "cpu,cpuacct",
        ];
        let mut file = String::from("13:rdma:/\n12:misc:/\n");
        for (n, controller) in controllers.iter().enumerate() {
            file.push_str(&format!("{}:{controller}:{path}\n", 11 - n));
        }
        file.push_str(&format!("1:name=systemd:{path}\n"));
        file
    }

    #[test]
    fn containerd_systemd_driver_cgroup_v2() {
        let file = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/\
             cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn containerd_systemd_driver_guaranteed_and_besteffort_pods() {
        let guaranteed = format!("0::/kubepods.slice/kubepods-pod{POD_SLICE_UID}.slice/cri-containerd-{ID}.scope");
        let besteffort = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SLICE_UID}.slice/\
             cri-containerd-{ID}.scope"
        );
        for file in [guaranteed, besteffort] {
            assert_eq!(container_of(&file), container(ID, Runtime::Containerd), "{file}");
            assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID), "{file}");
        }
    }

    #[test]
    fn containerd_cgroupfs_driver_every_qos_class() {
        for qos in ["/burstable", "/besteffort", ""] {
            let file = format!("0::/kubepods{qos}/pod{POD_UID}/{ID}\n");
            assert_eq!(container_of(&file), container(ID, Runtime::Containerd), "{file}");
            assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID), "{file}");
        }
    }

    #[test]
    fn dockershim_cgroupfs_is_reported_as_containerd_with_the_right_id() {
        // Same shape as containerd's: the id is what matters, the runtime is the likelier one.
        let file = v1_file(&format!("/kubepods/burstable/pod{POD_UID}/{ID}"));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
    }

    #[test]
    fn dockershim_systemd_driver_is_docker() {
        let file = v1_file(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/docker-{ID}.scope"
        ));
        assert_eq!(container_of(&file), container(ID, Runtime::Docker));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn crio_systemd_driver() {
        let file = v1_file(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/crio-{ID}.scope"
        ));
        assert_eq!(container_of(&file), container(ID, Runtime::CriO));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn crio_conmon_cgroup_is_not_the_container_but_is_in_the_pod() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/\
             crio-conmon-{ID}.scope"
        );
        let cgroupfs = format!("0::/kubepods/burstable/pod{POD_UID}/crio-conmon-{ID}");
        for file in [systemd, cgroupfs] {
            assert_eq!(container_of(&file), None, "{file}");
            assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID), "{file}");
        }
    }

    #[test]
    fn crio_cgroupfs_driver() {
        let file = format!("0::/kubepods/besteffort/pod{POD_UID}/crio-{ID}");
        assert_eq!(container_of(&file), container(ID, Runtime::CriO));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn docker_systemd_driver() {
        assert_eq!(container_of(&format!("0::/system.slice/docker-{ID}.scope\n")), container(ID, Runtime::Docker));
        assert_eq!(pod_uid_of(&format!("0::/system.slice/docker-{ID}.scope\n")), None);
    }

    #[test]
    fn docker_cgroupfs_driver_v1() {
        let file = v1_file(&format!("/docker/{ID}"));
        assert_eq!(container_of(&file), container(ID, Runtime::Docker));
        assert_eq!(pod_uid_of(&file), None);
    }

    #[test]
    fn containerd_scope_misplaced_under_its_service_in_v1() {
        // kubernetes/kubernetes#106514: runc's `slice:prefix:id` name used as a directory.
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{STATIC_POD_UID}.slice:cri-containerd:{ID}"
        );
        let file = format!("12:memory:/kubepods/burstable/pod{STATIC_POD_UID}\n1:name=systemd:{path}\n0::/\n");
        assert_eq!(container_in_path(&path), container(ID, Runtime::Containerd));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        assert_eq!(pod_uid_in_path(&path).as_deref(), Some(STATIC_POD_UID));
    }

    #[test]
    fn static_pod_uid_is_a_manifest_hash() {
        let file = format!("0::/kubepods/burstable/pod{STATIC_POD_UID}/{ID}");
        assert_eq!(pod_uid_of(&file).as_deref(), Some(STATIC_POD_UID));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
    }

    #[test]
    fn v1_file_with_root_lines_mixed_in() {
        let path = format!("/kubepods/besteffort/pod{POD_UID}/{ID}");
        let file = format!("{}0::/\n", v1_file(&path));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn hybrid_host_with_systemd_driver_agrees_on_both_hierarchies() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/\
             cri-containerd-{ID}.scope"
        );
        let file = format!("{}0::{path}\n", v1_file(&path));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
    }

    #[test]
    fn hybrid_host_falls_back_to_v1_when_the_unified_line_names_only_a_service() {
        let file = format!("{}0::/system.slice/containerd.service\n", v1_file(&format!("/kubepods/pod{POD_UID}/{ID}")));
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
    }

    #[test]
    fn unified_line_wins_over_v1_lines() {
        let file = format!("4:memory:/docker/{OUTER_ID}/docker/{OUTER_ID}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_of(&file), container(ID, Runtime::Docker));
    }

    #[test]
    fn deepest_v1_line_wins() {
        let file = format!(
            "5:cpuset:/docker/{OUTER_ID}\n4:memory:/docker/{OUTER_ID}/docker/{ID}\n3:pids:/docker/{OUTER_ID}\n"
        );
        assert_eq!(container_of(&file), container(ID, Runtime::Docker));
    }

    #[test]
    fn nested_cgroup_inside_a_container_belongs_to_it() {
        let file = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/\
             cri-containerd-{ID}.scope/init.scope"
        );
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        let docker = format!("0::/system.slice/docker-{ID}.scope/system.slice/nginx.service");
        assert_eq!(container_of(&docker), container(ID, Runtime::Docker));
    }

    #[test]
    fn kind_node_reports_the_innermost_container() {
        let cgroupfs = format!("0::/docker/{OUTER_ID}/kubepods/burstable/pod{POD_UID}/{ID}");
        let systemd = format!(
            "0::/system.slice/docker-{OUTER_ID}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_SLICE_UID}.slice/\
             cri-containerd-{ID}.scope"
        );
        let crio = format!(
            "0::/docker/{OUTER_ID}/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod{POD_SLICE_UID}.slice/crio-{ID}.scope"
        );
        assert_eq!(container_of(&cgroupfs), container(ID, Runtime::Containerd));
        assert_eq!(container_of(&systemd), container(ID, Runtime::Containerd));
        assert_eq!(container_of(&crio), container(ID, Runtime::CriO));
        for file in [cgroupfs, systemd, crio] {
            assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID), "{file}");
        }
    }

    #[test]
    fn docker_in_docker_reports_the_inner_container() {
        assert_eq!(container_of(&format!("0::/docker/{OUTER_ID}/docker/{ID}")), container(ID, Runtime::Docker));
        // The outer container alone is still a container.
        assert_eq!(container_of(&format!("0::/docker/{OUTER_ID}")), container(OUTER_ID, Runtime::Docker));
    }

    #[test]
    fn paths_relative_to_a_cgroup_namespace() {
        let systemd = format!("0::/../../kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{ID}.scope");
        let cgroupfs = format!("0::/../../../burstable/pod{POD_UID}/{ID}");
        for file in [systemd, cgroupfs] {
            assert_eq!(container_of(&file), container(ID, Runtime::Containerd), "{file}");
            assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID), "{file}");
        }
    }

    #[test]
    fn host_processes_have_no_container() {
        for file in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/init.scope\n",
            "0::/system.slice/ssh.service\n",
            "0::/system.slice/containerd.service\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "0::/\n",
        ] {
            assert_eq!(container_of(file), None, "{file}");
            assert_eq!(pod_uid_of(file), None, "{file}");
        }
        assert_eq!(container_of(&v1_file("/user.slice/user-1000.slice/session-3.scope")), None);
    }

    #[test]
    fn empty_and_garbage_text_has_no_container() {
        for file in [
            "",
            "\n\n",
            "   ",
            "garbage",
            "::",
            "0:",
            "x::/docker/0",
            "\u{1F600}:\u{e9}:/docker/\u{e9}\u{e9}",
            "\0\0\0",
        ] {
            assert_eq!(container_of(file), None, "{file:?}");
            assert_eq!(pod_uid_of(file), None, "{file:?}");
        }
        // A hierarchy id that is not a number makes the line garbage, whatever its path.
        assert_eq!(container_of(&format!("x::/docker/{ID}")), None);
    }

    #[test]
    fn ids_must_be_64_lowercase_hex_digits() {
        let short = &ID[..63];
        let long = format!("{ID}0");
        let uppercase = ID.to_uppercase();
        let not_hex = format!("{}g", &ID[..63]);
        for id in [short, &long, &uppercase, &not_hex] {
            assert_eq!(container_of(&format!("0::/docker/{id}")), None, "{id}");
            assert_eq!(container_of(&format!("0::/system.slice/docker-{id}.scope")), None, "{id}");
            assert_eq!(container_of(&format!("0::/kubepods/pod{POD_UID}/{id}")), None, "{id}");
        }
    }

    #[test]
    fn non_ascii_ids_of_the_right_byte_length_are_rejected() {
        // 32 two-byte characters: 64 bytes, no char boundary at any fixed offset.
        let accented = "\u{e9}".repeat(32);
        assert_eq!(container_of(&format!("0::/docker/{accented}")), None);
        assert_eq!(container_of(&format!("0::/kubepods/pod{}/{ID}", "\u{e9}".repeat(18))), None);
        assert_eq!(pod_uid_in_path(&format!("/kubepods-pod{}.slice", "\u{e9}".repeat(16))), None);
    }

    #[test]
    fn bare_ids_under_other_parents_are_not_containers() {
        for path in [
            format!("/{ID}"),
            format!("/ecs/8f1c2b3a4d5e6f708192a3b4c5d6e7f8/{ID}"),
            format!("/default/{ID}"),
            format!("/system.slice/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/pod{POD_UID}/{ID}"),
        ] {
            assert_eq!(container_in_path(&path), None, "{path}");
        }
    }

    #[test]
    fn pod_uids_must_be_well_formed() {
        for path in [
            "/kubepods/burstable/pod",
            "/kubepods/burstable/podnot-a-uid",
            "/kubepods/burstable/pod2FC932CE-FDCC-454B-97BD-AADFDEB4C340",
            "/kubepods/burstable/pod2fc932ce_fdcc_454b_97bd_aadfdeb4c340",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2fc932ce_fdcc_454b_97bd.slice",
            "/system.slice/other-pod2fc932ce_fdcc_454b_97bd_aadfdeb4c340.slice",
            "/burstable/pod2fc932ce-fdcc-454b-97bd-aadfdeb4c340",
        ] {
            assert_eq!(pod_uid_in_path(path), None, "{path}");
        }
    }

    #[test]
    fn surrounding_whitespace_and_blank_lines_are_ignored() {
        let file = format!("\n  \r\n0::/kubepods/besteffort/pod{POD_UID}/{ID}  \r\n\n");
        assert_eq!(container_of(&file), container(ID, Runtime::Containerd));
        assert_eq!(pod_uid_of(&file).as_deref(), Some(POD_UID));
        assert_eq!(container_in_path(&format!("/system.slice/docker-{ID}.scope\n")), container(ID, Runtime::Docker));
    }
}
