// Copy buttons for the fix commands. The page reads the same without this script: the
// buttons stay hidden and the commands can be selected by hand.
(function () {
  "use strict";
  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }
  function flash(button, text) {
    button.textContent = text;
    window.setTimeout(function () { button.textContent = "Copy"; }, 1600);
  }
  var buttons = document.querySelectorAll("button.copy");
  Array.prototype.forEach.call(buttons, function (button) {
    var code = button.parentNode.querySelector("code");
    if (!code) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = code.textContent;
      function fallback() {
        select(code);
        var ok = false;
        try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
        flash(button, ok ? "Copied" : "Press Ctrl+C");
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { flash(button, "Copied"); },
                                                  fallback);
      } else {
        fallback();
      }
    });
  });
})();
