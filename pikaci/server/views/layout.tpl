<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if get('refresh', 0):
<meta http-equiv="refresh" content="{{refresh}}">
% end
<title>{{title}} · pikaci</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/pikaci.css">
<link rel="stylesheet" href="/static/ansi.css">
</head>
<body>
<header class="top">
  <a class="brand" href="/">pikaci</a>
  % if get('slug'):
  <a class="crumb" href="/repos/{{slug}}/runs">{{slug}}</a>
  % end
  % if logged_in:
  <form class="logout" method="post" action="/logout"><button type="submit">Log out</button></form>
  % end
</header>
<main>
{{!base}}
</main>
</body>
</html>
