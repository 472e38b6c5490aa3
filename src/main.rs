use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3 options (`enum mi_option_e` in mimalloc.h); `allocator_options_are_where_expected`
/// checks the indices against the documented defaults.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed after a burst goes back to the system at once, instead of waiting for the
/// next allocation activity (which an idle daemon never has), and arenas are committed as
/// they are used, not up front.
fn tune_allocator() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is
    // thread-safe and may be called at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    keystone::cli::run(keystone::cli::Cli::parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_options_are_where_expected() {
        // mimalloc's own defaults (src/options.c): eager commit 2 (on overcommit systems),
        // purge delay 1000 ms. Read before `tune_allocator`, so a shifted enum fails here.
        // SAFETY: mi_option_get only reads mimalloc's option table.
        let (commit, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!((commit, delay), (2, 1000));
        tune_allocator();
        // SAFETY: as above.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 0);
    }
}
