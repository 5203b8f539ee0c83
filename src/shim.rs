//! Calling the C++ shim (`csrc/`, built by `build.rs`): the conventions every `msd_*` function
//! shares — tensors passed as arrays of `at::Tensor*` handles, failures reported as a non-zero
//! return and a NUL-terminated message in a caller-owned buffer.

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::Tensor;

/// Length of the error buffer handed to a shim call.
pub(crate) const ERR_LEN: usize = 2048;

/// The `at::Tensor*` handles of `tensors`, for a shim function taking `at::Tensor**`; valid
/// while `tensors` is borrowed.
pub(crate) fn tensor_ptrs(tensors: &mut [Tensor]) -> Vec<*mut c_void> {
    tensors.iter_mut().map(|t| t.as_mut_ptr() as *mut c_void).collect()
}

/// The message a shim call left in `buf` (empty when it wrote none).
pub(crate) fn message(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Runs a shim call given an error buffer and its length; `Err` carries its message when it
/// returns non-zero.
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> std::result::Result<(), String> {
    let mut err = vec![0u8; ERR_LEN];
    match f(err.as_mut_ptr() as *mut c_char, ERR_LEN) {
        0 => Ok(()),
        _ => Err(message(&err)),
    }
}
