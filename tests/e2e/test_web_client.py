"""The web client at /app/, driven in Debian's Chromium by Playwright: two people chat, then edit,
delete, react and search."""

from __future__ import annotations

import os
import re
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
    query, gateway_a, gateway_b = await start_with_two_gateways(system)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            alice, bob = await alice_and_bob(browser, query, gateway_a, gateway_b, height=700)

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


async def start_with_two_gateways(system):
    await system.start("writer")
    await system.start("notifier")
    gateway_a = await system.start("gateway")
    gateway_b = await system.start("gateway")
    gateways = f"ws://127.0.0.1:{gateway_a.port}/,ws://127.0.0.1:{gateway_b.port}/"
    query = await system.start("query", env={"CHAT_DEV_LOGIN": "true", "CHAT_WEB_GATEWAYS": gateways})
    return query, gateway_a, gateway_b


async def alice_and_bob(browser, query, gateway_a, gateway_b, height: int):
    """Two browser contexts, alice on gateway a and bob on gateway b, both signed in."""
    pages = []
    for user, gateway in (("alice", gateway_a), ("bob", gateway_b)):
        page = await (await browser.new_context(viewport={"width": 1100, "height": height})).new_page()
        await sign_in(page, f"{query.url}/app/?gateway=ws://127.0.0.1:{gateway.port}/", user)
        pages.append(page)
    return pages


async def write(page, text: str) -> None:
    await page.get_by_label("Message", exact=True).fill(text)
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".message.mine", has_text=text)).to_have_count(1)
    await expect(page.locator(".message.pending")).to_have_count(0)


async def test_edit_delete_react_and_search_in_the_browser(system):
    query, gateway_a, gateway_b = await start_with_two_gateways(system)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            alice, bob = await alice_and_bob(browser, query, gateway_a, gateway_b, height=800)
            await alice.get_by_label("With (user ids, comma-separated)").fill("bob")
            await alice.get_by_role("button", name="Start").click()
            await expect(alice.locator("#conversation-title")).to_have_text("bob")
            await write(alice, "Lunch at noon?")
            await write(alice, "서울역에서 만나요")
            await bob.locator("#conversations button", has_text="alice").click()
            await expect(bob.locator(".message")).to_have_count(2)

            # alice fixes her message; bob sees the new text marked edited
            lunch = alice.locator(".message.mine", has_text="Lunch at noon?")
            await lunch.get_by_role("button", name="Edit message").click()
            await alice.get_by_label("Edit message text").fill("Lunch at one?")
            await alice.get_by_role("button", name="Save").click()
            bobs_lunch = bob.locator(".message", has_text="Lunch at one?")
            await expect(bobs_lunch).to_contain_text("edited")
            await expect(alice.locator(".message.mine", has_text="Lunch at one?")).to_contain_text("edited")
            # only the sender may edit or delete: bob's page offers neither on alice's message
            await expect(bobs_lunch.get_by_role("button", name="Edit message")).to_have_count(0)
            await expect(bobs_lunch.get_by_role("button", name="Delete message")).to_have_count(0)

            # bob reacts; alice sees it under the message and adds hers with one click
            await bobs_lunch.get_by_role("button", name="Add reaction").click()
            await bobs_lunch.get_by_role("button", name="React 👍").click()
            alices_chip = alice.locator(".message", has_text="Lunch at one?").locator(".reaction")
            await expect(alices_chip).to_have_text("👍 1")
            await expect(alices_chip).to_have_attribute("aria-pressed", "false")
            await alices_chip.click()
            await expect(bobs_lunch.locator(".reaction")).to_have_text("👍 2")
            await expect(alices_chip).to_have_attribute("aria-pressed", "true")
            await bobs_lunch.locator(".reaction").click()  # bob takes his back
            await expect(alices_chip).to_have_text("👍 1")

            # alice deletes the other message: it becomes a tombstone on both pages
            alice.on("dialog", lambda dialog: dialog.accept())
            seoul = alice.locator(".message.mine", has_text="서울역에서 만나요")
            await seoul.get_by_role("button", name="Delete message").click()
            await expect(bob.locator(".message", has_text="서울역에서")).to_have_count(0)
            await expect(bob.locator(".message.deleted")).to_have_text(re.compile("Message deleted"))
            await expect(alice.locator(".message.deleted")).to_have_count(1)

            # bob's gateway goes away; alice edits and reacts meanwhile; bob catches up on reconnect
            gateway_b.terminate()
            await expect(bob.locator("#status")).not_to_have_text("online")
            await (
                alice.locator(".message.mine", has_text="Lunch at one?")
                .get_by_role("button", name="Edit message")
                .click()
            )
            await alice.get_by_label("Edit message text").fill("Lunch at two, 역 앞에서")
            await alice.get_by_role("button", name="Save").click()
            await expect(alice.locator(".message.mine", has_text="Lunch at two")).to_have_count(1)
            await system.start("gateway", port=gateway_b.port)
            await expect(bob.locator("#status")).to_have_text("online", timeout=30000)
            await expect(bob.locator(".message", has_text="Lunch at two, 역 앞에서")).to_have_count(1, timeout=15000)
            await expect(bob.locator(".message", has_text="Lunch at two").locator(".reaction")).to_have_text("👍 1")

            # search: inside words, in Korean too; deleted text is gone; a result opens its conversation
            await bob.get_by_label("Search messages").fill("역")
            await bob.get_by_role("button", name="Search", exact=True).click()
            results = bob.locator("#search-results li")
            await expect(results).to_have_count(1)
            await expect(results).to_contain_text("Lunch at two, 역 앞에서")
            await bob.get_by_label("Search messages").fill("서울역")
            await bob.get_by_role("button", name="Search", exact=True).click()
            await expect(results).to_have_text(["No messages found"])
            await bob.get_by_label("Search messages").fill("UNCH")
            await bob.get_by_role("button", name="Search", exact=True).click()
            await expect(results).to_have_count(1)
            await results.get_by_role("button").click()
            await expect(bob.locator("#conversation-title")).to_have_text("alice")
            if os.environ.get("CHAT_SCREENSHOT"):
                shot = Path(os.environ["CHAT_SCREENSHOT"])
                await bob.screenshot(path=str(shot.with_name(f"{shot.stem}-features{shot.suffix}")))
        finally:
            await browser.close()
