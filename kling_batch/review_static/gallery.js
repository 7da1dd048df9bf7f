// kling-batch review: filters, keyboard, hover-to-play, rows in sync, pick commands.
// Reads only the page itself; no request leaves it.
"use strict";
(function () {
  const cards = Array.from(document.querySelectorAll(".card"));
  const text = document.getElementById("filter-text");
  const state = document.getElementById("filter-state");
  const tag = document.getElementById("filter-tag");
  const pickedOnly = document.getElementById("filter-picked");
  const shown = document.getElementById("shown");
  const bar = document.getElementById("pick-bar");
  const command = document.getElementById("pick-command");

  function matches(card, words) {
    return (!state.value || card.dataset.state === state.value) &&
      (!tag.value || JSON.parse(card.dataset.tags).includes(tag.value)) &&
      (!pickedOnly.checked || card.classList.contains("picked")) &&
      words.every(function (word) { return card.dataset.search.includes(word); });
  }

  function applyFilters() {
    const words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
    let count = 0;
    for (const card of cards) {
      card.hidden = !matches(card, words);
      if (!card.hidden) count += 1;
    }
    for (const group of document.querySelectorAll(".grid-row, .grid-block, section.shot")) {
      group.hidden = !group.querySelector(".card:not([hidden])");
    }
    shown.textContent = count + " of " + cards.length + " shown";
  }

  function visibleCards() {
    return cards.filter(function (card) { return !card.closest("[hidden]"); });
  }

  function move(step) {
    const list = visibleCards();
    if (!list.length) return;
    const current = document.activeElement ? document.activeElement.closest(".card") : null;
    const at = list.indexOf(current);
    const next = at < 0 ? list[0] : list[Math.min(list.length - 1, Math.max(0, at + step))];
    next.focus();
    next.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  function togglePlay(card) {
    const video = card.querySelector("video.render");
    if (!video) return;
    delete video.dataset.hover;
    if (video.paused) video.play().catch(function () {}); else video.pause();
  }

  function updateCommand() {
    const added = [], removed = [];
    for (const card of cards) {
      const was = card.dataset.picked === "true", is = card.classList.contains("picked");
      if (is && !was) added.push(card.dataset.id);
      if (was && !is) removed.push(card.dataset.id);
    }
    const base = document.body.dataset.pickCommand;
    const line = function (flag, ids) {
      const dashes = ids.some(function (id) { return id.startsWith("-"); }) ? " --" : "";
      return base + flag + " " + document.body.dataset.manifest + dashes + " " + ids.join(" ");
    };
    const lines = [];
    if (added.length) lines.push(line("", added));
    if (removed.length) lines.push(line(" --unpick", removed));
    command.textContent = lines.join("\n");
    bar.hidden = !lines.length;
  }

  function toggleStar(card) {
    const picked = !card.classList.contains("picked");
    card.classList.toggle("picked", picked);
    const star = card.querySelector("button.star");
    star.setAttribute("aria-pressed", String(picked));
    star.textContent = picked ? "\u2605" : "\u2606";
    updateCommand();
    if (pickedOnly.checked) applyFilters();
  }

  function playInSync(videos) {
    if (!videos.length) return;
    const lead = videos[0];
    videos.forEach(function (video, index) {
      delete video.dataset.hover;
      video.pause();
      video.currentTime = 0;
      if (index > 0) video.muted = true;
    });
    const follow = function () {
      for (const video of videos) {
        if (video !== lead && !video.ended && Math.abs(video.currentTime - lead.currentTime) > 0.15) {
          video.currentTime = lead.currentTime;
        }
      }
    };
    lead.addEventListener("timeupdate", follow);
    lead.addEventListener("pause", function stop() {
      lead.removeEventListener("timeupdate", follow);
      lead.removeEventListener("pause", stop);
      videos.forEach(function (video) { video.pause(); });
    });
    videos.forEach(function (video) { video.play().catch(function () {}); });
  }

  for (const input of [text, state, tag, pickedOnly]) {
    input.addEventListener("input", applyFilters);
    input.addEventListener("change", applyFilters);
  }

  for (const video of document.querySelectorAll("video.render")) {
    video.addEventListener("mouseenter", function () {
      if (!video.paused) return;
      video.muted = true;
      video.dataset.hover = "1";
      video.play().catch(function () {});
    });
    video.addEventListener("mouseleave", function () {
      if (video.dataset.hover) { delete video.dataset.hover; video.pause(); }
    });
    video.addEventListener("click", function () { delete video.dataset.hover; });
  }

  for (const button of document.querySelectorAll("button.star")) {
    button.addEventListener("click", function () { toggleStar(button.closest(".card")); });
  }

  for (const button of document.querySelectorAll("button.sync")) {
    button.addEventListener("click", function () {
      const row = button.closest(".grid-row");
      const videos = Array.from(row.querySelectorAll(".card:not([hidden]) video.render"));
      playInSync(videos);
    });
  }

  document.getElementById("pick-copy").addEventListener("click", function () {
    const fallback = function () {
      const range = document.createRange();
      range.selectNodeContents(command);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(command.textContent).catch(fallback);
    } else {
      fallback();
    }
  });

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.key === "Escape") {
      text.value = "";
      applyFilters();
      if (target.blur) target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.matches("input, select, textarea")) return;
    // Native controls keep their own keys: space and arrows on a video, space on a button.
    if (target.matches("video, button") && [" ", "Enter", "ArrowLeft", "ArrowRight"].includes(event.key)) return;
    const card = document.activeElement ? document.activeElement.closest(".card") : null;
    switch (event.key) {
      case "j": case "ArrowRight": move(1); break;
      case "k": case "ArrowLeft": move(-1); break;
      case "/": text.focus(); break;
      case " ": if (!card) return; togglePlay(card); break;
      case "s": if (!card) return; toggleStar(card); break;
      default: return;
    }
    event.preventDefault();
  });
})();
