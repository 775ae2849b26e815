async def test_healthz(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz(client):
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_me(client, make_tenant):
    t = await make_tenant()
    r = await client.get("/v1/me", headers=t.headers)
    assert r.status_code == 200, r.text
    assert r.json()["tenant_id"] == str(t.id)
