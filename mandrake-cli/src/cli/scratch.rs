//! Where the tools make their scratch databases.

/// Where the tools make the scratch databases they replay migrations on.
/// Never `DATABASE_URL`'s server while another is at hand: pointed at
/// production, the tools would create and drop databases there (Atlas
/// keeps a dev database apart for the same reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchServer {
    /// `--database-url`, given for this command.
    Flag,
    /// `MANDRAKE_DEV_URL`: a server kept for the tools.
    DevUrl,
    /// The embedded cluster, when its binaries are on this machine.
    Embedded,
    /// `DATABASE_URL`'s server, the last resort.
    DatabaseUrl,
}

impl ScratchServer {
    /// The first of: the flag, `MANDRAKE_DEV_URL`, the embedded cluster,
    /// `DATABASE_URL`.
    pub fn choose(flag: bool, dev_url: bool, embedded: bool) -> ScratchServer {
        match (flag, dev_url, embedded) {
            (true, _, _) => ScratchServer::Flag,
            (_, true, _) => ScratchServer::DevUrl,
            (_, _, true) => ScratchServer::Embedded,
            _ => ScratchServer::DatabaseUrl,
        }
    }
}

impl std::fmt::Display for ScratchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScratchServer::Flag => "--database-url",
            ScratchServer::DevUrl => "MANDRAKE_DEV_URL",
            ScratchServer::Embedded => "the embedded cluster",
            ScratchServer::DatabaseUrl => "DATABASE_URL: set MANDRAKE_DEV_URL to keep them off it",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ScratchServer;

    #[test]
    fn scratch_databases_go_to_database_url_only_when_nothing_else_is_at_hand() {
        let choose = ScratchServer::choose;
        assert_eq!(choose(true, true, true), ScratchServer::Flag);
        assert_eq!(choose(false, true, true), ScratchServer::DevUrl);
        assert_eq!(choose(false, false, true), ScratchServer::Embedded);
        assert_eq!(choose(false, false, false), ScratchServer::DatabaseUrl);
    }
}
