"""The ledger: the authoritative SQL record of every notification job and each of its attempts."""
