"""The web client at /app/, driven in Debian's Chromium by Playwright: two people chat."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.async_api import async_playwright, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What this machine's closed network needs (see docs/testing.md): no background connections.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


async def sign_in(page, url: str, user: str) -> None:
    await page.goto(url)
    await page.get_by_label("User id", exact=True).fill(user)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#status")).to_have_text("online", timeout=15000)
    await expect(page.locator("#whoami")).to_have_text(f"Signed in as {user}")


async def test_two_people_chat_in_the_browser(system):
    await system.start("writer")
    await system.start("notifier")
    gateway_a = await system.start("gateway")
    gateway_b = await system.start("gateway")
    gateways = f"ws://127.0.0.1:{gateway_a.port}/,ws://127.0.0.1:{gateway_b.port}/"
    query = await system.start("query", env={"CHAT_DEV_LOGIN": "true", "CHAT_WEB_GATEWAYS": gateways})
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            alice = await (await browser.new_context(viewport={"width": 1100, "height": 700})).new_page()
            bob = await (await browser.new_context(viewport={"width": 1100, "height": 700})).new_page()
            await sign_in(alice, f"{query.url}/app/?gateway=ws://127.0.0.1:{gateway_a.port}/", "alice")
            await sign_in(bob, f"{query.url}/app/?gateway=ws://127.0.0.1:{gateway_b.port}/", "bob")

            # alice starts a direct conversation; bob sees it appear live
            await alice.get_by_label("With (user ids, comma-separated)").fill("bob")
            await alice.get_by_role("button", name="Start").click()
            await expect(alice.locator("#conversation-title")).to_have_text("bob")
            bobs_item = bob.locator("#conversations button", has_text="alice")
            await expect(bobs_item).to_contain_text("no messages yet")

            # alice writes; the pending state clears on the echo; bob gets an unread badge
            await alice.get_by_label("Message", exact=True).fill("Hello Bob")
            await alice.get_by_label("Message", exact=True).press("Enter")
            await expect(alice.locator(".message.mine", has_text="Hello Bob")).to_have_count(1)
            await expect(alice.locator(".message.pending")).to_have_count(0)
            await expect(bobs_item.locator(".badge")).to_have_text("1")

            # bob opens it: the badge goes, alice sees her message read
            await bobs_item.click()
            await expect(bob.locator(".message", has_text="Hello Bob")).to_be_visible()
            await expect(bob.locator(".badge")).to_have_count(0)
            await expect(alice.locator(".message.mine", has_text="Hello Bob").locator(".state")).to_have_text("· seen")

            # bob types and answers
            await bob.get_by_label("Message", exact=True).press_sequentially("Hi", delay=30)
            await expect(alice.locator("#typing")).to_have_text("bob is typing…")
            await bob.get_by_label("Message", exact=True).fill("Hi Alice")
            await bob.get_by_role("button", name="Send").click()
            await expect(alice.locator(".message", has_text="Hi Alice")).to_be_visible()
            await expect(alice.locator("#typing")).to_have_text("")

            # bob's gateway goes away; alice writes meanwhile; bob reconnects and catches up
            gateway_b.terminate()
            await expect(bob.locator("#status")).not_to_have_text("online")
            await alice.get_by_label("Message", exact=True).fill("Are you there?")
            await alice.get_by_label("Message", exact=True).press("Enter")
            await expect(alice.locator(".message.mine", has_text="Are you there?")).to_have_count(1)
            await expect(bob.locator(".message", has_text="Are you there?")).to_have_count(0)
            await system.start("gateway", port=gateway_b.port)
            await expect(bob.locator("#status")).to_have_text("online", timeout=30000)
            await expect(bob.locator(".message", has_text="Are you there?")).to_be_visible(timeout=15000)
            assert await bob.locator(".message").count() == 3  # once each, in order
            texts = await bob.locator(".message .content").all_inner_texts()
            assert texts == ["Hello Bob", "Hi Alice", "Are you there?"]

            # a link naming another gateway cannot make the page send the token there
            lured = await (await browser.new_context()).new_page()
            await lured.goto(f"{query.url}/app/?gateway=ws://attacker.invalid/")
            await lured.wait_for_function("state.gatewayUrl !== null")
            assert await lured.evaluate("state.gatewayUrl") == f"ws://127.0.0.1:{gateway_a.port}/"
            assert await lured.evaluate("localStorage.getItem('chat.gateway')") is None

            if os.environ.get("CHAT_SCREENSHOT"):
                await alice.screenshot(path=str(Path(os.environ["CHAT_SCREENSHOT"])))
        finally:
            await browser.close()
