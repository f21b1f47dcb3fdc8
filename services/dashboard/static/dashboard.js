// The one script: "Copy" buttons. Everything else works without JavaScript.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector(".copied");
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied.";
  } catch {
    // No clipboard permission (plain HTTP, an old browser): the text is selected for Ctrl-C.
    if (status) status.textContent = "Selected: press Ctrl-C (⌘-C) to copy.";
  }
});
