// PageNow chat web client: uses only the public contract (REST on this origin, the gateway's WebSocket).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, me: null, claim: "cognito:username", gatewayUrl: null,
  ws: null, backoff: 500, reconnectTimer: null, heartbeatTimer: null,
  conversations: new Map(),        // id -> summary (REST shape)
  current: null,                   // open conversation id
  messages: new Map(),             // messageId -> element, for the open conversation
  items: new Map(),                // messageId -> latest known state (history item shape)
  pending: new Map(),              // tempMessageId -> {element, frame}
  oldestSeq: null, newestSeq: 0,   // of the open conversation, for paging
  newestChange: 0,                 // the open conversation's change counter as far as we have it
  loading: false,                  // the open conversation's first page is on its way
  catchingUp: null,                // the running catch-up, so gaps do not start a second one
  search: { q: "", next: null },
  typingTimer: null, lastTypingSent: 0,
};

// ---- helpers ----------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch { return null; }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: state.token, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw Object.assign(new Error(body?.message || response.statusText), { status: response.status });
  return body;
}

function setStatus(value) { const s = $("status"); s.dataset.state = value; s.textContent = value; }
function time(iso) { return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }
function nameOf(c) {
  if (c.title) return c.title;
  const others = (c.participantIds || []).filter((u) => u !== state.me);
  return others.join(", ") || c.participantId || "conversation";
}

// ---- sign-in ----------------------------------------------------------------------------------

async function boot() {
  const params = new URLSearchParams(location.search);
  const config = await (await fetch("/app/config.json")).json().catch(() => ({}));
  // The token goes to the gateway, so only a gateway the server lists is ever used: a link with
  // ?gateway=wss://elsewhere/ cannot send it anywhere else. Nothing from the URL is remembered.
  const gateways = config.gateways && config.gateways.length ? config.gateways
    : [`${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:8080/`];
  const asked = params.get("gateway");
  state.gatewayUrl = gateways.includes(asked) ? asked : gateways[0];
  state.claim = config.userClaim || state.claim;
  $("dev-signin").hidden = !config.devLogin;
  $("dev-signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/dev/token", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId: $("dev-user").value.trim() }),
    });
    const body = await response.json();
    if (!response.ok) { $("signin-error").textContent = body.message; return; }
    signIn(body.token);
  });
  $("token-signin").addEventListener("submit", (event) => { event.preventDefault(); signIn($("token").value.trim()); });
  $("sign-out").addEventListener("click", signOut);
  $("new-conversation").addEventListener("submit", createConversation);
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); sendMessage(); }
  });
  $("message").addEventListener("input", sendTyping);
  $("load-earlier").addEventListener("click", loadEarlier);
  $("search").addEventListener("submit", (event) => { event.preventDefault(); search(false).catch(showSearchError); });
  $("search-more").addEventListener("click", () => search(true).catch(showSearchError));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) markRead(); });
  const saved = sessionStorage.getItem("chat.token");
  if (saved) signIn(saved);
}

function signIn(token) {
  const claims = decodeClaims(token);
  const me = claims && claims[state.claim];
  if (!me) { $("signin-error").textContent = `That token has no ${state.claim} claim.`; return; }
  state.token = token;
  state.me = me;
  sessionStorage.setItem("chat.token", token);
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("whoami").hidden = false;
  $("whoami").textContent = `Signed in as ${me}`;
  $("sign-out").hidden = false;
  loadConversations().catch(showError);
  connect();
}

function signOut() {
  sessionStorage.removeItem("chat.token");
  location.reload();
}

function showError(error) {
  if (error.status === 401) { signOut(); return; }
  $("create-error").textContent = error.message;
}

// ---- conversations ----------------------------------------------------------------------------

async function loadConversations() {
  const list = await api("/conversations");
  for (const c of list) state.conversations.set(c.conversationId, { ...state.conversations.get(c.conversationId), ...c });
  renderConversations();
}

function renderConversations() {
  const items = [...state.conversations.values()].sort((a, b) => (b.sentAt || "").localeCompare(a.sentAt || ""));
  $("conversations").replaceChildren(...items.map((c) => {
    const unread = c.conversationId === state.current ? 0 : c.unreadCount || 0;
    const button = el("button", { type: "button", "aria-current": String(c.conversationId === state.current),
                                  "data-conversation": c.conversationId },
      el("span", { class: "name" }, nameOf(c)),
      unread ? el("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)) : null,
      el("span", { class: "latest" }, (c.lastSeq || 0) > 0 && c.senderId
        ? `${c.senderId}: ${c.latestContent || "message deleted"}` : "no messages yet"));
    button.addEventListener("click", () => openConversation(c.conversationId));
    return el("li", {}, button);
  }));
}

async function createConversation(event) {
  event.preventDefault();
  $("create-error").textContent = "";
  const recipients = $("recipients").value.split(",").map((s) => s.trim()).filter(Boolean);
  const title = $("title").value.trim();
  try {
    const { conversationId } = await api("/conversation", {
      method: "POST", body: JSON.stringify({ recipientIdArr: recipients, isGroup: recipients.length > 1, title }),
    });
    if (!state.conversations.has(conversationId)) {
      state.conversations.set(conversationId, { conversationId, title: title || null,
        participantIds: [state.me, ...recipients], unreadCount: 0 });
    }
    $("new-conversation").reset();
    renderConversations();
    openConversation(conversationId);
  } catch (error) { showError(error); }
}

async function openConversation(id) {
  state.current = id;
  state.messages.clear();
  state.items.clear();
  state.pending.clear();
  state.oldestSeq = null;
  state.newestSeq = 0;
  state.newestChange = 0;
  $("chat-error").textContent = "";
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("composer").hidden = false;
  const info = await api(`/conversations/${id}`);
  const summary = state.conversations.get(id) || { conversationId: id };
  state.conversations.set(id, { ...summary, title: info.title, participantIds: info.participantIds, isGroup: info.isGroup });
  $("conversation-title").textContent = nameOf(state.conversations.get(id));
  $("participants").textContent = `With ${info.participantIds.filter((u) => u !== state.me).join(", ")}`;
  state.loading = true;  // frames that arrive meanwhile are applied, then the catch-up below closes any gap
  try {
    const page = await api(`/conversations/${id}/messages?limit=30&offset=0`);
    if (state.current !== id) return;
    page.reverse().forEach((m) => addMessage(m));
    state.newestChange = Math.max(0, ...page.map((m) => m.change || 0));
  } finally { state.loading = false; }
  await catchUpChanges();
  $("load-earlier").hidden = !(state.oldestSeq > 1);
  renderConversations();
  markRead();
  $("message").focus();
}

async function loadEarlier() {
  if (!state.current || !(state.oldestSeq > 1)) return;
  const page = await api(`/conversations/${state.current}/messages?limit=30&beforeSeq=${state.oldestSeq}`);
  page.forEach((m) => addMessage(m, { prepend: true }));  // newest first: each goes above the last
  $("load-earlier").hidden = !(state.oldestSeq > 1);
}

async function catchUp() {
  // after a reconnect: every message new, edited, deleted or reacted to since the newest change we have
  if (state.current) {
    await catchUpChanges();
    markRead();
  }
  await loadConversations();
}

function catchUpChanges() {
  if (!state.catchingUp) {
    const id = state.current;
    state.catchingUp = (async () => {
      for (;;) {
        const page = await api(`/conversations/${id}/changes?after=${state.newestChange}&limit=100`);
        if (state.current !== id) return;
        page.forEach((m) => applyMessage(m));
        if (page.length < 100) return;
      }
    })().finally(() => { state.catchingUp = null; });
  }
  return state.catchingUp;
}

function sawChange(frame) {
  // change is gapless per conversation: a jump means a frame was missed while we were away
  if (frame.change == null || state.loading) return;
  if (frame.change > state.newestChange + 1) catchUpChanges().catch(() => {});
  else state.newestChange = Math.max(state.newestChange, frame.change);
}

// ---- messages ---------------------------------------------------------------------------------

function applyMessage(m) {
  // a history item from /changes: new, or the latest state of one we show
  if (state.messages.has(m.messageId)) updateMessage(m);
  else if (state.oldestSeq == null || m.seq > state.oldestSeq) addMessage(m);  // older ones come with "Load earlier"
  if (m.change != null) state.newestChange = Math.max(state.newestChange, m.change);
}

function addMessage(m, { prepend = false } = {}) {
  if (state.messages.has(m.messageId)) return;
  const pending = m.tempMessageId && state.pending.get(m.tempMessageId);
  const node = pending ? pending.element : el("li", { class: "message" });
  state.items.set(m.messageId, { editedAt: null, deleted: false, reactions: [], ...m });
  renderMessage(node, state.items.get(m.messageId));
  if (pending) state.pending.delete(m.tempMessageId);
  state.messages.set(m.messageId, node);
  if (!pending) {
    const list = $("messages");
    const after = [...list.children].find((child) => child.dataset.seq && Number(child.dataset.seq) > m.seq);
    if (prepend || after) list.insertBefore(node, after || list.firstChild); else list.append(node);
  }
  state.oldestSeq = state.oldestSeq == null ? m.seq : Math.min(state.oldestSeq, m.seq);
  state.newestSeq = Math.max(state.newestSeq, m.seq);
  if (!prepend) node.scrollIntoView({ block: "nearest" });
}

function updateMessage(update) {
  const known = state.items.get(update.messageId);
  const node = state.messages.get(update.messageId);
  if (!known || !node || (known.change != null && update.change != null && update.change <= known.change)) return;
  const item = { ...known, content: update.content, editedAt: update.editedAt, deleted: update.deleted,
                 reactions: update.reactions, change: update.change };
  state.items.set(update.messageId, item);
  if (node.querySelector("form.edit")) return;  // being edited here: shown as it is now when the form closes
  const seen = node.querySelector(".state")?.textContent || "";
  renderMessage(node, item);
  const mark = node.querySelector(".state");
  if (mark) mark.textContent = seen;
}

const EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

function renderMessage(node, m) {
  const mine = m.senderId === state.me;
  node.className = `message${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}`;
  node.dataset.seq = m.seq;
  node.dataset.messageId = m.messageId;
  const meta = el("span", { class: "meta" }, `${mine ? "You" : m.senderId} · ${time(m.sentAt)}`,
    m.editedAt && !m.deleted ? el("span", { class: "edited", title: `edited ${time(m.editedAt)}` }, " · edited") : null,
    mine ? el("span", { class: "state" }, "") : null);
  if (m.deleted) {
    node.replaceChildren(meta, el("span", { class: "content" }, "Message deleted"));
    return;
  }
  const tools = el("span", { class: "tools" });
  if (mine) {
    const edit = el("button", { type: "button", class: "tool", "aria-label": "Edit message" }, "Edit");
    edit.addEventListener("click", () => startEdit(node, m));
    const remove = el("button", { type: "button", class: "tool", "aria-label": "Delete message" }, "Delete");
    remove.addEventListener("click", () => {
      if (confirm("Delete this message for everyone?")) send({ action: "delete-message", messageId: m.messageId });
    });
    tools.append(edit, remove);
  }
  const add = el("button", { type: "button", class: "tool", "aria-label": "Add reaction", "aria-expanded": "false" }, "☺+");
  const picker = el("span", { class: "picker", hidden: true });
  for (const emoji of EMOJI) {
    const choice = el("button", { type: "button", class: "tool", "aria-label": `React ${emoji}` }, emoji);
    choice.addEventListener("click", () => {
      picker.hidden = true;
      add.setAttribute("aria-expanded", "false");
      react(m, emoji, !reactedWith(m, emoji));
    });
    picker.append(choice);
  }
  add.addEventListener("click", () => {
    picker.hidden = !picker.hidden;
    add.setAttribute("aria-expanded", String(!picker.hidden));
  });
  tools.append(add, picker);
  const reactions = el("span", { class: "reactions" }, ...(m.reactions || []).map((r) => {
    const chip = el("button", { type: "button", class: "reaction", "aria-pressed": String(r.userIds.includes(state.me)),
                                title: r.userIds.join(", "), "data-emoji": r.emoji,
                                "aria-label": `${r.emoji} ${r.userIds.length}: ${r.userIds.join(", ")}` },
      `${r.emoji} ${r.userIds.length}`);
    chip.addEventListener("click", () => react(m, r.emoji, !r.userIds.includes(state.me)));
    return chip;
  }));
  node.replaceChildren(meta, el("span", { class: "content" }, m.content), reactions, tools);
}

function reactedWith(m, emoji) {
  return (m.reactions || []).some((r) => r.emoji === emoji && r.userIds.includes(state.me));
}

function react(m, emoji, on) {
  send({ action: "react", messageId: m.messageId, emoji, on });
}

function startEdit(node, m) {
  const box = el("textarea", { rows: 2, maxLength: 1000, value: m.content, "aria-label": "Edit message text" });
  const save = el("button", { type: "submit" }, "Save");
  const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
  const form = el("form", { class: "edit" }, box, save, cancel);
  const restore = () => renderMessage(node, state.items.get(m.messageId) || m);
  cancel.addEventListener("click", restore);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") restore();
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = box.value.trimEnd();
    if (content && content !== m.content) send({ action: "edit-message", messageId: m.messageId, content });
    restore();  // the stored edit comes back as message-updated
  });
  node.querySelector(".content").replaceWith(form);
  box.focus();
}

// ---- search -----------------------------------------------------------------------------------

async function search(more) {
  $("search-error").textContent = "";
  if (!more) state.search = { q: $("search-q").value.trim(), next: null };
  if (!state.search.q) { $("search-results").replaceChildren(); $("search-more").hidden = true; return; }
  const params = new URLSearchParams({ q: state.search.q, limit: "20" });
  if (more && state.search.next) params.set("before", state.search.next);
  const page = await api(`/search?${params}`);
  const items = page.results.map((m) => {
    const c = state.conversations.get(m.conversationId) || { conversationId: m.conversationId };
    const button = el("button", { type: "button", class: "result", "data-conversation": m.conversationId },
      el("span", { class: "name" }, `${nameOf(c)} · ${m.senderId === state.me ? "You" : m.senderId}`),
      el("span", { class: "when" }, time(m.sentAt)),
      el("span", { class: "latest" }, m.content));
    button.addEventListener("click", () => openConversation(m.conversationId));
    return el("li", {}, button);
  });
  if (more) $("search-results").append(...items); else $("search-results").replaceChildren(...items);
  if (!more && !items.length) $("search-results").replaceChildren(el("li", { class: "hint" }, "No messages found"));
  state.search.next = page.next;
  $("search-more").hidden = !page.next;
}

function showSearchError(error) {
  if (error.status === 401) { signOut(); return; }
  $("search-error").textContent = error.message;
}

function sendMessage() {
  const content = $("message").value.trimEnd();
  if (!content || !state.current) return;
  const tempMessageId = crypto.randomUUID();
  const frame = { action: "send-message", tempMessageId, conversationId: state.current, content };
  const element = el("li", { class: "message mine pending", "data-temp": tempMessageId },
    el("span", { class: "meta" }, "You · sending…"), el("span", { class: "content" }, content));
  $("messages").append(element);
  element.scrollIntoView({ block: "nearest" });
  state.pending.set(tempMessageId, { element, frame });
  $("message").value = "";
  send(frame);
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
  // otherwise it stays pending and is resent, with the same tempMessageId, once connected
}

function sendTyping() {
  const now = Date.now();
  if (!state.current || now - state.lastTypingSent < 2000) return;
  state.lastTypingSent = now;
  send({ action: "typing", conversationId: state.current });
}

function markRead() {
  if (!state.current || document.hidden) return;
  const c = state.conversations.get(state.current);
  if (c && (c.unreadCount || 0) === 0 && (c.lastReadSeq ?? 0) >= state.newestSeq) return;
  send({ action: "read-messages", conversationId: state.current });
}

function markSeen(upto, reader) {
  for (const node of $("messages").querySelectorAll(".message.mine")) {
    if (Number(node.dataset.seq) <= upto) {
      const mark = node.querySelector(".state");
      if (mark) mark.textContent = state.conversations.get(state.current)?.isGroup ? `· seen by ${reader}` : "· seen";
    }
  }
}

// ---- the WebSocket ----------------------------------------------------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  setStatus("connecting");
  const ws = new WebSocket(`${state.gatewayUrl}?Authorization=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  ws.addEventListener("open", () => {
    setStatus("online");
    state.backoff = 500;
    for (const { frame } of state.pending.values()) ws.send(JSON.stringify(frame));  // same tempMessageId: idempotent
    catchUp().catch(showError);
    clearInterval(state.heartbeatTimer);
    state.heartbeatTimer = setInterval(() => send({ action: "heartbeat" }), 60000);
  });
  ws.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  ws.addEventListener("close", () => {
    if (state.ws !== ws) return;
    setStatus("offline");
    clearInterval(state.heartbeatTimer);
    const delay = state.backoff * (0.75 + Math.random() * 0.5);
    state.backoff = Math.min(state.backoff * 2, 10000);
    state.reconnectTimer = setTimeout(connect, delay);
  });
}

function onFrame(frame) {
  switch (frame.type) {
    case "new-message": {
      const c = state.conversations.get(frame.conversationId) || { conversationId: frame.conversationId, unreadCount: 0 };
      const fresh = (c.lastSeq || 0) < frame.seq;
      Object.assign(c, { latestContent: frame.content, senderId: frame.senderId, sentAt: frame.sentAt,
                         lastSeq: Math.max(c.lastSeq || 0, frame.seq) });
      if (fresh && frame.senderId !== state.me && frame.conversationId !== state.current) c.unreadCount = (c.unreadCount || 0) + 1;
      state.conversations.set(frame.conversationId, c);
      if (frame.conversationId === state.current) {
        sawChange(frame);
        addMessage(frame);
        if (frame.senderId !== state.me) { $("typing").textContent = ""; markRead(); }
      }
      if (!c.participantIds) loadConversations().catch(() => {});
      renderConversations();
      break;
    }
    case "message-updated": {
      const c = state.conversations.get(frame.conversationId);
      if (c && c.lastSeq === frame.seq) { c.latestContent = frame.content; renderConversations(); }
      if (frame.conversationId === state.current) {
        updateMessage(frame);
        sawChange(frame);
      }
      break;
    }
    case "read-messages": {
      const c = state.conversations.get(frame.conversationId);
      if (c) { c.unreadCount = Math.max(0, (c.lastSeq || 0) - frame.lastReadSeq); c.lastReadSeq = frame.lastReadSeq; }
      renderConversations();
      break;
    }
    case "read-receipt":
      if (frame.conversationId === state.current) markSeen(frame.lastReadSeq, frame.userId);
      break;
    case "typing":
      if (frame.conversationId === state.current) {
        $("typing").textContent = `${frame.userId} is typing…`;
        clearTimeout(state.typingTimer);
        state.typingTimer = setTimeout(() => { $("typing").textContent = ""; }, 3000);
      }
      break;
    case "conversation-created":
      if (!state.conversations.has(frame.conversationId)) {
        state.conversations.set(frame.conversationId, { conversationId: frame.conversationId, title: frame.title,
          isGroup: frame.isGroup, participantIds: frame.participantIds, unreadCount: 0 });
        renderConversations();
      }
      break;
    case "error": {
      const pending = frame.tempMessageId && state.pending.get(frame.tempMessageId);
      if (pending && (frame.code === "unavailable" || frame.code === "rate_limited")) {
        setTimeout(() => send(pending.frame), 1000);  // retry with the same tempMessageId
      } else if (pending) {
        pending.element.classList.add("failed");
        pending.element.querySelector(".meta").textContent = `Not sent: ${frame.message}`;
        state.pending.delete(frame.tempMessageId);
      } else if (frame.messageId) {
        $("chat-error").textContent = frame.message;  // an edit, delete or reaction refused
      }
      break;
    }
  }
}

boot();
