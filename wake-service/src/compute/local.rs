//! The `local` driver: one Postgres 15 cluster plus one PgBouncer per endpoint, as processes
//! on this machine running as an unprivileged OS user. (Being written.)
