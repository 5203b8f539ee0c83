//! Data-parallel training on PyTorch's own distributed engine, c10d (`TCPStore` rendezvous,
//! `ProcessGroupGloo` for CPU tensors), through the C++ shim `csrc/dist.cpp`.
//!
//! - [`Launch`] reads who this process is from torchrun's environment (`RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`,
//!   `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST`).
//! - [`ProcessGroup`] forms the group and runs the collectives the trainer needs: all-reduce
//!   (sum), all-gather, broadcast, barrier. Every collective waits at most the group's timeout,
//!   so a rank that dies makes the others fail instead of hang.
//!
//! Gloo takes CPU tensors; with the `cuda` feature, `ProcessGroup::new_nccl` forms an NCCL
//! group for CUDA tensors (`csrc/dist_nccl.cpp`; built, not yet run on a GPU).

pub mod local;

use std::ffi::{c_char, c_int, c_void, CString};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::shim::{self, ERR_LEN};

extern "C" {
    fn msd_init(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        iface: *const c_char,
        err: *mut c_char,
        errlen: usize,
    ) -> *mut c_void;
    fn msd_free(g: *mut c_void);
    fn msd_allreduce_sum(g: *mut c_void, ts: *const *mut c_void, n: c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_allgather(g: *mut c_void, out: *mut c_void, input: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_broadcast(g: *mut c_void, ts: *const *mut c_void, n: c_int, root: c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_barrier(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
}

#[cfg(feature = "cuda")]
extern "C" {
    fn msd_init_nccl(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        err: *mut c_char,
        errlen: usize,
    ) -> *mut c_void;
}

/// Who this process is in a distributed run, and where the group meets.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank within this node.
    pub local_rank: usize,
    /// Address of rank 0's store.
    pub master_addr: String,
    /// Port of rank 0's store.
    pub master_port: u16,
}

/// The default rendezvous port (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// A one-process "group" (nothing is formed).
    pub fn single() -> Launch {
        Launch { rank: 0, world: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: DEFAULT_PORT }
    }

    /// Reads torchrun's variables (when `WORLD_SIZE` is set) or SLURM's (when `SLURM_NTASKS`
    /// is), from `get` (normally `std::env::var`). None when neither is present.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |key: &str, v: String| -> Result<usize> {
            v.trim().parse::<usize>().map_err(|_| Error::config(key, &v, "must be a non-negative integer"))
        };
        let port = |v: Option<String>| -> Result<u16> {
            match v {
                None => Ok(DEFAULT_PORT),
                Some(p) => match p.trim().parse::<u16>() {
                    Ok(x) if x > 0 => Ok(x),
                    _ => Err(Error::config("MASTER_PORT", &p, "must be a port number in 1..=65535")),
                },
            }
        };
        let launch = if let Some(w) = get("WORLD_SIZE") {
            let world = num("WORLD_SIZE", w)?;
            let rank = num("RANK", get("RANK").ok_or_else(|| Error::config("RANK", "(unset)", "torchrun sets RANK with WORLD_SIZE"))?)?;
            let local_rank = get("LOCAL_RANK").map(|v| num("LOCAL_RANK", v)).transpose()?.unwrap_or(rank);
            let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
            Launch { rank, world, local_rank, master_addr, master_port: port(get("MASTER_PORT"))? }
        } else if let Some(n) = get("SLURM_NTASKS") {
            let world = num("SLURM_NTASKS", n)?;
            let rank = num("SLURM_PROCID", get("SLURM_PROCID").unwrap_or_else(|| "0".into()))?;
            let local_rank = num("SLURM_LOCALID", get("SLURM_LOCALID").unwrap_or_else(|| "0".into()))?;
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => first_host(&get("SLURM_JOB_NODELIST").unwrap_or_else(|| "127.0.0.1".into())),
            };
            Launch { rank, world, local_rank, master_addr, master_port: port(get("MASTER_PORT"))? }
        } else {
            return Ok(None);
        };
        if !(1..=4096).contains(&launch.world) {
            return Err(Error::config("WORLD_SIZE", launch.world, "must be in 1..=4096"));
        }
        if launch.rank >= launch.world {
            return Err(Error::config("RANK", launch.rank, format!("must be below WORLD_SIZE = {}", launch.world)));
        }
        if launch.master_addr.trim().is_empty() {
            return Err(Error::config("MASTER_ADDR", "(empty)", "must name rank 0's host"));
        }
        Ok(Some(launch))
    }

    /// [`Launch::from_env_with`] over the process environment.
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_env_with(|k| std::env::var(k).ok())
    }
}

/// The first host of a SLURM node list: `node[03-05,9],gpu1` → `node03`; `a,b` → `a`.
pub fn first_host(list: &str) -> String {
    let list = list.trim();
    let end = list.find(',').unwrap_or(list.len());
    let bracket = list.find('[');
    match bracket {
        Some(b) if b < end => {
            let close = list[b..].find(']').map_or(list.len(), |c| b + c);
            let first = list[b + 1..close].split([',', '-']).next().unwrap_or("");
            format!("{}{}", &list[..b], first)
        }
        _ => list[..end].to_string(),
    }
}

/// A formed Gloo process group (CPU tensors).
pub struct ProcessGroup {
    handle: *mut c_void,
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Where the group met (for error messages).
    pub address: String,
    /// Where the group's tensors live: CPU for Gloo, a CUDA device for NCCL.
    pub device: tch::Device,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = if self.device.is_cuda() { "nccl" } else { "gloo" };
        write!(f, "ProcessGroup({backend}, rank {} of {}, {})", self.rank, self.world, self.address)
    }
}

// The handle is used from one thread at a time (the training loop).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Forms the group described by `launch`: rank 0 serves a `TCPStore` on
    /// `master_addr:master_port`, every rank connects, then Gloo connects the ranks pairwise.
    /// Fails (naming the address) when the port is taken, the master is unreachable or not
    /// all `world` ranks arrive within `timeout_s`. `GLOO_SOCKET_IFNAME` picks the interface.
    pub fn new(launch: &Launch, timeout_s: u64) -> Result<ProcessGroup> {
        let iface = CString::new(std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default()).unwrap_or_default();
        Self::form(launch, timeout_s, tch::Device::Cpu, "rendezvous", |host, port, rank, world, timeout_ms, err| unsafe {
            msd_init(host, port, rank, world, timeout_ms, iface.as_ptr(), err, ERR_LEN)
        })
    }

    /// Runs one backend's `init` (C API: host, port, rank, world, timeout in ms, error buffer;
    /// null on failure) and wraps its handle; the error names the address.
    fn form(
        launch: &Launch,
        timeout_s: u64,
        device: tch::Device,
        what: &str,
        init: impl FnOnce(*const c_char, c_int, c_int, c_int, c_int, *mut c_char) -> *mut c_void,
    ) -> Result<ProcessGroup> {
        let address = format!("{}:{}", launch.master_addr, launch.master_port);
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| Error::config("MASTER_ADDR", &launch.master_addr, "contains a NUL byte"))?;
        let timeout_ms = (timeout_s.clamp(1, 86_400) * 1000) as c_int;
        let mut err = vec![0u8; ERR_LEN];
        let handle = init(
            host.as_ptr(),
            launch.master_port as c_int,
            launch.rank as c_int,
            launch.world as c_int,
            timeout_ms,
            err.as_mut_ptr() as *mut c_char,
        );
        if handle.is_null() {
            // The address, port or world size given cannot form a group: input (exit 2).
            return Err(Error::Invalid(format!(
                "{what} at {address} (rank {} of {}) failed: {}",
                launch.rank,
                launch.world,
                shim::message(&err).lines().next().unwrap_or("")
            )));
        }
        Ok(ProcessGroup { handle, rank: launch.rank, world: launch.world, address, device })
    }

    /// An NCCL group for CUDA tensors on `device` (`cuda` feature), formed over the same
    /// `TCPStore` rendezvous as [`ProcessGroup::new`].
    #[cfg(feature = "cuda")]
    pub fn new_nccl(launch: &Launch, timeout_s: u64, device: tch::Device) -> Result<ProcessGroup> {
        Self::form(launch, timeout_s, device, "NCCL rendezvous", |host, port, rank, world, timeout_ms, err| unsafe {
            msd_init_nccl(host, port, rank, world, timeout_ms, err, ERR_LEN)
        })
    }

    /// Runs one collective through the shim; a failure names this rank and the collective.
    fn collective(&self, what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
        shim::call(f).map_err(|why| {
            Error::Distributed(format!(
                "rank {} of {}: {what} failed (another rank died or timed out?): {}",
                self.rank,
                self.world,
                why.lines().next().unwrap_or("")
            ))
        })
    }

    /// Sums each tensor over the ranks, in place (contiguous CPU tensors). The reductions run
    /// concurrently, then are all awaited.
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let ptrs = shim::tensor_ptrs(tensors);
        self.collective("all-reduce", |err, len| unsafe { msd_allreduce_sum(self.handle, ptrs.as_ptr(), ptrs.len() as c_int, err, len) })
    }

    /// Every rank's `input` (`[n, ...]`, the same shape on all ranks) stacked in rank order:
    /// `[world · n, ...]`. No gradient flows through the result.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor> {
        let mut input = input.detach().contiguous();
        let mut shape = input.size();
        shape[0] *= self.world as i64;
        let mut out = Tensor::zeros(&shape, (input.kind(), input.device()));
        self.collective("all-gather", |err, len| unsafe {
            msd_allgather(self.handle, out.as_mut_ptr() as *mut c_void, input.as_mut_ptr() as *mut c_void, err, len)
        })?;
        Ok(out)
    }

    /// Every rank's tensors take rank `root`'s values, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let ptrs = shim::tensor_ptrs(tensors);
        self.collective("broadcast", |err, len| unsafe {
            msd_broadcast(self.handle, ptrs.as_ptr(), ptrs.len() as c_int, root as c_int, err, len)
        })
    }

    /// Waits until every rank arrives.
    pub fn barrier(&self) -> Result<()> {
        self.collective("barrier", |err, len| unsafe { msd_barrier(self.handle, err, len) })
    }

    /// Sums a scalar over the ranks.
    pub fn sum_f64(&self, v: f64) -> Result<f64> {
        let mut t = [Tensor::from_slice(&[v]).to_kind(Kind::Double).to_device(self.device)];
        self.all_reduce_sum(&mut t)?;
        Ok(t[0].double_value(&[0]))
    }

    /// Sums the tensors over the ranks in buckets of about `bucket_bytes`: each bucket is
    /// flattened into one buffer, all buckets are reduced concurrently, and the sums are
    /// copied back (DDP's bucketing; 25 MB is its default).
    pub fn all_reduce_bucketed(&self, tensors: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let mut buckets: Vec<Vec<&Tensor>> = vec![];
        let mut size = 0usize;
        for t in tensors {
            let bytes = t.numel() * t.kind().elt_size_in_bytes();
            // A new bucket when the current one would overflow or holds another dtype.
            if buckets.last().is_none_or(|b| size + bytes > bucket_bytes || b[0].kind() != t.kind()) {
                buckets.push(vec![]);
                size = 0;
            }
            buckets.last_mut().expect("a bucket is opened above").push(t);
            size += bytes;
        }
        let mut flat: Vec<Tensor> =
            buckets.iter().map(|b| Tensor::cat(&b.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)).collect();
        self.all_reduce_sum(&mut flat)?;
        tch::no_grad(|| {
            for (b, f) in buckets.iter().zip(&flat) {
                let mut off = 0i64;
                for t in b {
                    let n = t.numel() as i64;
                    t.shallow_clone().copy_(&f.narrow(0, off, n).view_as(t));
                    off += n;
                }
            }
        });
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { msd_free(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launch_reads_torchrun_and_slurm() {
        assert_eq!(Launch::from_env_with(env(&[])).unwrap(), None);
        let l = Launch::from_env_with(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29555"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l, Launch { rank: 3, world: 4, local_rank: 1, master_addr: "10.0.0.2".into(), master_port: 29555 });
        let l = Launch::from_env_with(env(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-10,12],cpu1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l, Launch { rank: 5, world: 8, local_rank: 1, master_addr: "gpu07".into(), master_port: DEFAULT_PORT });
        for (pairs, key) in [
            (vec![("WORLD_SIZE", "2"), ("RANK", "2")], "RANK"),
            (vec![("WORLD_SIZE", "0"), ("RANK", "0")], "WORLD_SIZE"),
            (vec![("WORLD_SIZE", "two"), ("RANK", "0")], "WORLD_SIZE"),
            (vec![("WORLD_SIZE", "2")], "RANK"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")], "MASTER_PORT"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "-1")], "MASTER_PORT"),
        ] {
            let e = Launch::from_env_with(env(&pairs)).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn first_host_of_slurm_lists() {
        assert_eq!(first_host("node[03-05,9],gpu1"), "node03");
        assert_eq!(first_host("a,b"), "a");
        assert_eq!(first_host("single"), "single");
        assert_eq!(first_host("n[7]"), "n7");
    }

    /// A one-rank group: every collective is the identity, over a real TCPStore and Gloo.
    #[test]
    fn one_rank_group_collectives() {
        let port = free_port();
        let g = ProcessGroup::new(&Launch { master_port: port, ..Launch::single() }, 30).unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let mut v = [t.copy()];
        g.all_reduce_sum(&mut v).unwrap();
        assert_eq!(Vec::<f32>::try_from(&v[0]).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(g.all_gather(&t.view([3, 1])).unwrap().size(), vec![3, 1]);
        g.barrier().unwrap();
        assert_eq!(g.sum_f64(2.5).unwrap(), 2.5);
    }

    /// A port nobody listens on right now.
    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}
