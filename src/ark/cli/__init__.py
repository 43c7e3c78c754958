"""The ``ark`` command line: thin commands that parse, build and call one thing each.

One module per command group, and :mod:`ark.cli.main` lists them all under the root group (the one place a
command is registered, and where ARK's errors become exit codes):

    main      the root group, `ark version`, the list of commands, errors -> exit codes
    common    what every command shares: --config/--data-dir, the console, Table, --help's layout
    up        `ark init`, `ark config check`, `ark up`
    models    `ark status`, `ark models list|pull`
    admin     `ark keys`, `ark teams`, `ark usage` (the gateway's management API)
    gpu       `ark gpu` (the arbiter, the NVML exporter); simulate: `ark gpu simulate`
    users     `ark users`
    edge      `ark render`, `ark audit`, and the bundle helpers certs, peers and firewall share
    certs     `ark certs`
    peers     `ark peers` (WireGuard)
    firewall  `ark firewall`

Nothing here is imported on import of the package: ``import ark.cli.common`` loads that module alone.
"""
