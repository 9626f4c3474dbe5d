"""``/docs`` works offline: the page and every script and stylesheet it loads come from the
API itself (Swagger UI's files are served from the package), nothing from a CDN."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from edgeplane.config import Settings
from edgeplane.roles.up import running_stack


async def test_docs_and_their_files_come_from_the_api(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker=fast_broker_url,
        store="memory://",
        port=0,
        workers=0,
        domain=unique_domain,
        admin_token="t",
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(base_url=stack.control.url, timeout=30) as http,
    ):
        page = await http.get("/docs")
        assert page.status_code == 200, page.text
        loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        loaded += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
        assert any(u.endswith(".js") for u in loaded) and any(u.endswith(".css") for u in loaded)
        for url in loaded:
            parts = urlsplit(url)
            assert not parts.netloc, f"/docs loads {url} from elsewhere"
            answer = await http.get(url)
            assert answer.status_code == 200, (url, answer.status_code)
            assert answer.content, url
