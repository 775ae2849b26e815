"""Plain parameterised SQL per aggregate. Tenant-owned data is reached through `tenant_tx`."""
