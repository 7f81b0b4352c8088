% rebase('layout', title=title, logged_in=logged_in)
<section class="login">
<h1>Log in</h1>
<p>Use one of this server's API tokens.</p>
% if failed:
<p class="error-message" role="alert">That token is not valid.</p>
% end
<form method="post" action="/login">
  <input type="hidden" name="next" value="{{next}}">
  <label for="token">Token</label>
  <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
  <button type="submit">Log in</button>
</form>
</section>
