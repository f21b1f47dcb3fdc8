// The playground: the cost before sending, audio as it streams, a download when done.
// Speech is posted to this dashboard (same origin, CSRF token in a header), which forwards it
// to the public API with the session's playground key and streams the answer back.
(() => {
  const form = document.getElementById("playground");
  if (!form) return;
  const text = document.getElementById("input");
  const cost = document.getElementById("cost");
  const voice = document.getElementById("voice");
  const blend = document.getElementById("blend");
  const format = document.getElementById("format");
  const speed = document.getElementById("speed");
  const speak = document.getElementById("speak");
  const status = document.getElementById("status");
  const player = document.getElementById("player");
  const download = document.getElementById("download");
  const balance = document.getElementById("balance");
  const preview = document.getElementById("preview");
  const MIME = { mp3: "audio/mpeg", opus: "audio/ogg", aac: "audio/aac", flac: "audio/flac",
                 wav: "audio/wav", pcm: "audio/L16" };

  // Billing counts Unicode code points, as the spread operator does (not UTF-16 units).
  const showCost = () => { cost.textContent = [...text.value].length.toLocaleString("en-US"); };
  text.addEventListener("input", showCost);
  showCost();

  const say = (message, isError) => {
    status.textContent = message;
    status.classList.toggle("error", Boolean(isError));
  };

  const refreshBalance = async () => {
    const answer = await fetch("/playground/balance", { headers: { Accept: "application/json" } });
    if (!answer.ok) return;
    const data = await answer.json();
    balance.textContent = data.unlimited ? "unlimited" : data.balance.toLocaleString("en-US");
  };

  document.getElementById("preview-button").addEventListener("click", () => {
    preview.src = `/playground/voices/${encodeURIComponent(voice.value)}/preview`;
    preview.play().catch(() => say("Press play to hear the preview.", false));
  });

  // Feeds MP3 to the audio element while it downloads (Media Source Extensions).
  async function streamMp3(reader, chunks) {
    const source = new MediaSource();
    player.src = URL.createObjectURL(source);
    await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
    const buffer = source.addSourceBuffer("audio/mpeg");
    const appended = () => new Promise((resolve) =>
      buffer.addEventListener("updateend", resolve, { once: true }));
    player.play().catch(() => {});
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      buffer.appendBuffer(value);
      await appended();
    }
    source.endOfStream();
  }

  async function readAll(reader, chunks) {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      chunks.push(value);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = format.value;
    const body = {
      input: text.value,
      voice: blend.value.trim() || voice.value,
      response_format: chosen,
      speed: Number(speed.value) || 1,
    };
    speak.disabled = true;
    download.hidden = true;
    say("Synthesizing…", false);
    const chunks = [];
    try {
      const answer = await fetch("/playground/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify(body),
        // A redirect here is the sign-in page: the session ended. Never play a page as audio.
        redirect: "manual",
      });
      if (answer.type === "opaqueredirect") {
        say("You are signed out. Sign in again to use the playground.", true);
        return;
      }
      if (!answer.ok) {
        const problem = await answer.json().catch(() => ({ detail: answer.statusText }));
        say(problem.detail || `Refused (${answer.status}).`, true);
        if (answer.status === 402) {
          const link = document.createElement("a");
          link.href = "/billing";
          link.textContent = "Buy credits";
          status.append(" ", link);
        }
        return;
      }
      const reader = answer.body.getReader();
      const streamable = chosen === "mp3" && window.MediaSource
        && MediaSource.isTypeSupported("audio/mpeg");
      if (streamable) {
        await streamMp3(reader, chunks);
      } else {
        await readAll(reader, chunks);
        player.src = URL.createObjectURL(new Blob(chunks, { type: MIME[chosen] }));
        player.play().catch(() => {});
      }
      download.href = URL.createObjectURL(new Blob(chunks, { type: MIME[chosen] }));
      download.download = `speech.${chosen}`;
      download.hidden = false;
      say("Done.", false);
    } catch (error) {
      // The stream was cut: when synthesis fails on our side the request is refunded, and what
      // was charged, if anything, shows under Usage.
      say("The audio stopped partway. A request that fails on our side is refunded; see Usage.",
          true);
    } finally {
      speak.disabled = false;
      setTimeout(refreshBalance, 300);
    }
  });
})();
